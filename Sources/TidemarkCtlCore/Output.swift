import Glibc
import TidemarkSystem

/// An error with a note on what it left behind (a partly written device).
public struct NotedError: Error, CustomStringConvertible {
    public var underlying: Error
    public var note: String
    public var description: String { "\(underlying)\n  note: \(note)" }
}

enum Format {
    /// "2024-05-01T12:34:56.789Z" (UTC).
    static func isoTime(unixMs: Int64) -> String {
        var secs = time_t(unixMs >= 0 ? unixMs / 1000 : (unixMs - 999) / 1000)
        let ms = Int(unixMs - Int64(secs) * 1000)
        var tmv = tm()
        gmtime_r(&secs, &tmv)
        func pad(_ v: Int32, _ w: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, w - s.count)) + s
        }
        let msText = String(repeating: "0", count: 3 - String(ms).count) + String(ms)
        return "\(pad(tmv.tm_year + 1900, 4))-\(pad(tmv.tm_mon + 1, 2))-\(pad(tmv.tm_mday, 2))T"
            + "\(pad(tmv.tm_hour, 2)):\(pad(tmv.tm_min, 2)):\(pad(tmv.tm_sec, 2)).\(msText)Z"
    }

    /// 16 lower-case hex digits, as key ids are printed.
    static func hex16(_ v: UInt64) -> String {
        let h = String(v, radix: 16)
        return String(repeating: "0", count: 16 - h.count) + h
    }

    /// "1.5 GiB", "512 KiB", "100 B".
    static func bytes(_ n: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var v = Double(n)
        var i = 0
        while v >= 1024 && i < units.count - 1 {
            v /= 1024
            i += 1
        }
        if i == 0 { return "\(n) B" }
        let tenths = Int((v * 10).rounded())
        return "\(tenths / 10).\(tenths % 10) \(units[i])"
    }

    /// Left-aligned columns separated by two spaces.
    static func table(_ rows: [[String]]) -> String {
        guard let first = rows.first else { return "" }
        var widths = [Int](repeating: 0, count: first.count)
        for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
        var out = ""
        for r in rows {
            var line = ""
            for (i, c) in r.enumerated() {
                line += i == r.count - 1 ? c : c + String(repeating: " ", count: widths[i] - c.count + 2)
            }
            out += line + "\n"
        }
        return out
    }
}
