import Foundation
import TidemarkCrypto
import TidemarkSystem

/// How a recovery point's id says what it spans. The id is an opaque string
/// in the segment and target formats (docs/wire-format.md,
/// docs/target-layout.md): this is a naming convention of the agent, read
/// by tools, not a format.
///
/// - A point of one disk: `p-<UTC time>-<12 hex digits>`, e.g.
///   `p-20250301T101500Z-3fa9c01b7de2`.
/// - A machine point over `n` ≥ 2 disks, tagged on every one of them at one
///   instant under the same id: `m<n>-<UTC time>-<12 hex digits>`, e.g.
///   `m2-20250301T101500Z-3fa9c01b7de2`. The count lets a reader of the
///   target tell a machine point held by all its disks from one that some
///   disk lost (docs/points-and-freeze.md, "Machine points").
///
/// Pure: no state. The random part comes from `SecureRandom`.
public enum PointID {
    /// Disks a machine point id can name (a count, not a limit of the agent's).
    public static let machineDisksMax = 9_999

    /// A new id for a point over `disks` disks, made at `date`.
    public static func make(disks: Int, at date: Date = Date()) -> String {
        precondition(disks >= 1 && disks <= machineDisksMax, "a point spans 1...\(machineDisksMax) disks")
        var b = [UInt8](repeating: 0, count: 6)
        // getrandom does not fail on Linux ≥ 3.17 with a valid buffer; if it
        // did, the id still differs by its time to the second.
        try? b.withUnsafeMutableBytes { try SecureRandom.fill($0) }
        let f = DateFormatter()
        f.dateFormat = "yyyyMMdd'T'HHmmss'Z'"
        f.timeZone = TimeZone(identifier: "UTC")
        f.locale = Locale(identifier: "en_US_POSIX")
        let prefix = disks == 1 ? "p" : "m\(disks)"
        return prefix + "-" + f.string(from: date) + "-" + b.map { String(format: "%02x", $0) }.joined()
    }

    /// The number of disks a machine point id says the point spans; nil for
    /// any other id (a point of one disk, or an id of another convention).
    public static func machineDisks(_ id: String) -> Int? {
        guard id.hasPrefix("m") else { return nil }
        let digits = id.dropFirst().prefix { $0.isASCII && $0.isNumber }
        guard !digits.isEmpty, digits.count <= 4, digits.first != "0",
              id.dropFirst(1 + digits.count).hasPrefix("-"),
              let n = Int(digits), n >= 2 else { return nil }
        return n
    }
}
