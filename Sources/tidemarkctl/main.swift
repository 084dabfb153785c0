print("tidemarkctl: not built yet")
