#pragma once
#include <stddef.h>
#include <stdint.h>

/* libFuzzer's driver (compiler-rt, FuzzerDriver.cpp). A SwiftPM executable
   target links with `--defsym main=<module>_main`, so libFuzzer's own main()
   is never used: each fuzz target defines <module>_main and calls this. */
int LLVMFuzzerRunDriver(int *argc, char ***argv,
                        int (*callback)(const uint8_t *data, size_t size));
