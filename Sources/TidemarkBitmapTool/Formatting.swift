import Glibc
import TidemarkSystem

/// Number and time formatting shared by the commands. Sizes are binary (KiB = 1024),
/// the way `chunk_size` is configured.
enum Format {
    /// `65536` → `64 KiB`, `1610612736` → `1.5 GiB`, `512` → `512 B`.
    static func bytes(_ value: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        var unit = 0
        var scale: UInt64 = 1
        while unit + 1 < units.count, value / scale >= 1024 {
            scale *= 1024
            unit += 1
        }
        if value % scale == 0 { return "\(value / scale) \(units[unit])" }
        return "\(fixed(Double(value) / Double(scale), decimals: 1)) \(units[unit])"
    }

    /// `part` as a percentage of `whole` with two decimals; a non-zero share too small to
    /// show says so instead of rounding to a misleading 0.00%.
    static func percent(_ part: UInt64, of whole: UInt64) -> String {
        guard whole > 0 else { return "0.00%" }
        if part == 0 { return "0.00%" }
        if part == whole { return "100.00%" }
        let value = Double(part) * 100 / Double(whole)
        if value < 0.01 { return "<0.01%" }
        if value > 99.99 { return ">99.99%" }
        return "\(fixed(value, decimals: 2))%"
    }

    /// `x` with exactly `decimals` digits after the point (no locale, no exponent).
    static func fixed(_ x: Double, decimals: Int) -> String {
        var scale = 1.0
        for _ in 0..<decimals { scale *= 10 }
        let scaled = (x * scale).rounded()
        let whole = UInt64(scaled / scale)
        let fraction = UInt64(scaled - Double(whole) * scale)
        guard decimals > 0 else { return "\(whole)" }
        let digits = String(fraction)
        return "\(whole)." + String(repeating: "0", count: max(0, decimals - digits.count)) + digits
    }

    /// Unix nanoseconds as ISO 8601 UTC with milliseconds, or `never` for 0.
    static func time(unixNs: UInt64) -> String {
        guard unixNs > 0 else { return "never" }
        var seconds = time_t(unixNs / 1_000_000_000)
        let millis = (unixNs / 1_000_000) % 1000
        var parts = tm()
        guard gmtime_r(&seconds, &parts) != nil else { return "\(unixNs) ns" }
        func pad(_ v: Int32, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))"
            + "T\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(millis), 3))Z"
    }

    /// Right-aligns `s` in `width` columns.
    static func right(_ s: String, _ width: Int) -> String {
        s.count >= width ? s : String(repeating: " ", count: width - s.count) + s
    }
}
