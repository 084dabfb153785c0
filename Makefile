# Convenience targets; the scripts are the source of truth.
.PHONY: deb test-deb test demo

# Both Debian packages into Packaging/out/ (release build, static Swift runtime).
deb:
	Packaging/build-deb.sh

# Build, install (chroot and this machine), upgrade, remove and purge the packages (root).
test-deb:
	Packaging/test-deb.sh

# The README's two commands.
test:
	scripts/test.sh

demo:
	scripts/demo.sh
