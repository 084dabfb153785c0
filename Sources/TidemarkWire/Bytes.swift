import TidemarkSystem

/// Checks an identifier (disk id, agent id, point id) before it is encoded:
/// 1...stringBytesMax bytes of UTF-8 without NUL.
func checkIdentifier(_ s: String, _ what: String) throws {
    let n = s.utf8.count
    guard n >= 1, n <= WireLimits.stringBytesMax else {
        throw TidemarkError(.invalidArgument, "\(what) '\(s.prefix(64))' is \(n) bytes; it must be 1...\(WireLimits.stringBytesMax) bytes of UTF-8")
    }
    guard !s.utf8.contains(0) else {
        throw TidemarkError(.invalidArgument, "\(what) '\(s.prefix(64))' contains a NUL byte")
    }
}

/// The same rule for a decoded identifier (malformed input is .corrupt).
func checkDecodedIdentifier(_ s: String, _ what: String, in context: String) throws {
    guard !s.isEmpty, !s.utf8.contains(0) else {
        throw TidemarkError(.corrupt, "\(context): \(what) is empty or contains a NUL byte")
    }
}

/// 16 lowercase hex digits.
func hex16(_ v: UInt64) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: 16 - s.count) + s
}
