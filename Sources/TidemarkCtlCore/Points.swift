import TidemarkSurface
import TidemarkSystem
import TidemarkTarget

/// What `tidemarkctl points list --json` prints: {"points":[...]}, ordered
/// by (disk, sequence).
public struct PointsListing: Codable, Sendable, Equatable {
    public var points: [Point]

    /// One recovery point that can be materialized.
    public struct Point: Codable, Sendable, Equatable {
        public var id: String
        public var diskID: String
        /// "crash-consistent", "app-consistent" or "unverified".
        public var pointClass: String
        public var timeUnixMs: Int64
        /// `timeUnixMs` as ISO 8601 UTC with milliseconds.
        public var time: String
        public var sequence: UInt64

        enum CodingKeys: String, CodingKey {
            case id
            case diskID = "disk_id"
            case pointClass = "class"
            case timeUnixMs = "time_unix_ms"
            case time
            case sequence
        }
    }

    init(_ records: [PointRecord]) {
        points = records.map {
            Point(id: $0.id, diskID: $0.diskID, pointClass: $0.pointClass, timeUnixMs: $0.timeUnixMs,
                  time: Format.isoTime(unixMs: $0.timeUnixMs), sequence: $0.sequence)
        }
    }
}

public enum PointsCommand {
    /// `tidemarkctl points list`: the recovery points that can be
    /// materialized, ordered by (disk, sequence). Text: a table (id, disk,
    /// class, time, sequence); JSON: one `PointsListing` object.
    public static func list(targetDir: String, diskID: String?, json: Bool) throws -> String {
        let points: [PointRecord]
        if let target = try TargetLocation.openExisting(targetDir) {
            if let diskID, try target.disk(diskID) == nil {
                throw TidemarkError(.notFound, "target storage \(targetDir) has no disk '\(diskID)'",
                                    hint: knownDisksHint(target))
            }
            points = try target.points(diskID: diskID)
        } else {
            points = []
        }
        if json { return try JSONOutput.line(PointsListing(points)) }
        guard !points.isEmpty else {
            return "no recovery points in \(targetDir)" + (diskID.map { " for disk '\($0)'" } ?? "") + "\n"
        }
        var rows = [["ID", "DISK", "CLASS", "TIME", "SEQUENCE"]]
        for p in points {
            rows.append([p.id, p.diskID, p.pointClass, Format.isoTime(unixMs: p.timeUnixMs), String(p.sequence)])
        }
        return Format.table(rows)
    }

    static func knownDisksHint(_ target: LocalDirectoryTarget) -> String {
        let ids = ((try? target.disks()) ?? []).map(\.diskID)
        if ids.isEmpty { return "the target holds no disk yet" }
        return "disks in this target: " + ids.prefix(10).joined(separator: ", ") + (ids.count > 10 ? ", …" : "")
    }
}
