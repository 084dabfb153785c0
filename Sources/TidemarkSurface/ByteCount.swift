import Foundation

/// Byte counts for people: binary units with one decimal, never a nonzero
/// count shown as zero ("640.0 KiB", not "0 MiB"). Machine output (`--json`)
/// keeps exact byte counts.
public enum ByteCount {
    public static func text(_ bytes: UInt64) -> String {
        if bytes < 1024 { return bytes == 1 ? "1 byte" : "\(bytes) bytes" }
        let units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        var value = Double(bytes) / 1024
        var unit = 0
        // Below 1023.95 so that the one decimal never shows 1024.0 of a unit.
        while value >= 1023.95 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return String(format: "%.1f %@", value, units[unit])
    }
}
