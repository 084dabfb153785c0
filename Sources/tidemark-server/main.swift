print("tidemark-server: not built yet")
