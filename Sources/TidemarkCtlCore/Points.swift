import TidemarkSystem
import TidemarkTarget

public enum PointsCommand {
    /// `tidemarkctl points list`: the recovery points that can be
    /// materialized, ordered by (disk, sequence). Text: a table (id, disk,
    /// class, time, sequence); JSON: {"points":[{"id","disk_id","class",
    /// "time_unix_ms","time","sequence"}]}.
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
        if json { return render(json: points) }
        guard !points.isEmpty else {
            return "no recovery points in \(targetDir)" + (diskID.map { " for disk '\($0)'" } ?? "") + "\n"
        }
        var rows = [["ID", "DISK", "CLASS", "TIME", "SEQUENCE"]]
        for p in points {
            rows.append([p.id, p.diskID, p.pointClass, Format.isoTime(unixMs: p.timeUnixMs), String(p.sequence)])
        }
        return Format.table(rows)
    }

    static func render(json points: [PointRecord]) -> String {
        let items = points.map { p in
            "{\"id\":\(Format.jsonString(p.id)),\"disk_id\":\(Format.jsonString(p.diskID)),"
                + "\"class\":\(Format.jsonString(p.pointClass)),\"time_unix_ms\":\(p.timeUnixMs),"
                + "\"time\":\(Format.jsonString(Format.isoTime(unixMs: p.timeUnixMs))),\"sequence\":\(p.sequence)}"
        }
        return "{\"points\":[" + items.joined(separator: ",") + "]}\n"
    }

    static func knownDisksHint(_ target: TargetRepository) -> String {
        let ids = ((try? target.disks()) ?? []).map(\.diskID)
        if ids.isEmpty { return "the target holds no disk yet" }
        return "disks in this target: " + ids.prefix(10).joined(separator: ", ") + (ids.count > 10 ? ", …" : "")
    }
}
