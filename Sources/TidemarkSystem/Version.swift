/// The product version: the one place it is written (packaging reads it here).
public let tidemarkVersion = "0.1.0"
