import TidemarkSystem
import TidemarkTarget
import TidemarkWire

public enum PointsCommand {
    /// `tidemarkctl points list`: the recovery points that can be
    /// materialized, ordered by (disk, sequence), then the machine points
    /// among them grouped (one id tagged on several disks at one instant;
    /// docs/points-and-freeze.md). Text: a table (id, disk, class, time,
    /// sequence), then a table of machine points (id, class, time, how many
    /// of its disks hold it, which). JSON: {"points":[{"id","disk_id",
    /// "class","time_unix_ms","time","sequence","scope"[,"machine_disks",
    /// "machine_complete"]}],"machine_points":[{"id","class","time_unix_ms",
    /// "time","disks_expected","complete","disks":[{"disk_id","sequence",
    /// "class"}]}]}.
    public static func list(targetDir: String, diskID: String?, json: Bool) throws -> String {
        let points: [PointRecord]
        var groups: [MachinePointGroup] = []
        if let target = try TargetLocation.openExisting(targetDir) {
            if let diskID, try target.disk(diskID) == nil {
                throw TidemarkError(.notFound, "target storage \(targetDir) has no disk '\(diskID)'",
                                    hint: knownDisksHint(target))
            }
            points = try target.points(diskID: diskID)
            // Whether a machine point is whole depends on every disk, also
            // when only one disk's points are listed.
            let all = diskID == nil ? points : try target.points(diskID: nil)
            groups = MachinePointGroup.groups(all).filter { g in diskID.map { d in g.points.contains { $0.diskID == d } } ?? true }
        } else {
            points = []
        }
        if json { return render(json: points, groups: groups) }
        guard !points.isEmpty else {
            return "no recovery points in \(targetDir)" + (diskID.map { " for disk '\($0)'" } ?? "") + "\n"
        }
        var rows = [["ID", "DISK", "CLASS", "TIME", "SEQUENCE"]]
        for p in points {
            rows.append([p.id, p.diskID, p.pointClass, Format.isoTime(unixMs: p.timeUnixMs), String(p.sequence)])
        }
        var out = Format.table(rows)
        if !groups.isEmpty {
            var machine = [["MACHINE POINT", "CLASS", "TIME", "DISKS", "HELD BY"]]
            for g in groups {
                machine.append([g.id, g.pointClass, Format.isoTime(unixMs: g.timeUnixMs),
                                "\(g.diskIDs.count) of \(g.expected)" + (g.complete ? "" : ", incomplete"),
                                g.diskIDs.joined(separator: " ")])
            }
            out += "\n" + Format.table(machine)
        }
        return out
    }

    static func render(json points: [PointRecord], groups: [MachinePointGroup]) -> String {
        let byID = Dictionary(groups.map { ($0.id, $0) }) { a, _ in a }
        let items = points.map { p in
            var item = "{\"id\":\(Format.jsonString(p.id)),\"disk_id\":\(Format.jsonString(p.diskID)),"
                + "\"class\":\(Format.jsonString(p.pointClass)),\"time_unix_ms\":\(p.timeUnixMs),"
                + "\"time\":\(Format.jsonString(Format.isoTime(unixMs: p.timeUnixMs))),\"sequence\":\(p.sequence)"
            if let g = byID[p.id] {
                item += ",\"scope\":\"machine\",\"machine_disks\":\(g.expected),\"machine_complete\":\(g.complete)"
            } else {
                item += ",\"scope\":\"disk\""
            }
            return item + "}"
        }
        let machine = groups.map { g in
            "{\"id\":\(Format.jsonString(g.id)),\"class\":\(Format.jsonString(g.pointClass)),\"time_unix_ms\":\(g.timeUnixMs),"
                + "\"time\":\(Format.jsonString(Format.isoTime(unixMs: g.timeUnixMs))),\"disks_expected\":\(g.expected),"
                + "\"complete\":\(g.complete),\"disks\":["
                + g.points.map { "{\"disk_id\":\(Format.jsonString($0.diskID)),\"sequence\":\($0.sequence),\"class\":\(Format.jsonString($0.pointClass))}" }
                    .joined(separator: ",")
                + "]}"
        }
        return "{\"points\":[" + items.joined(separator: ",") + "],\"machine_points\":[" + machine.joined(separator: ",") + "]}\n"
    }

    static func knownDisksHint(_ target: TargetRepository) -> String {
        let ids = ((try? target.disks()) ?? []).map(\.diskID)
        if ids.isEmpty { return "the target holds no disk yet" }
        return "disks in this target: " + ids.prefix(10).joined(separator: ", ") + (ids.count > 10 ? ", …" : "")
    }
}

/// A machine point as target storage holds it: the point manifests that
/// carry its id, one per disk that holds it (complete points only). Its id
/// says how many disks it was tagged on (`PointID`); a group with fewer is
/// incomplete: a disk lost its tag, or its segments are not all stored yet.
struct MachinePointGroup: Equatable {
    var id: String
    var expected: Int
    /// One per disk, in disk id order.
    var points: [PointRecord]

    var diskIDs: [String] { points.map(\.diskID) }
    var complete: Bool { Set(diskIDs).count >= expected }
    /// The earliest time any disk's tag gives (they agree: one instant).
    var timeUnixMs: Int64 { points.map(\.timeUnixMs).min() ?? 0 }
    /// The weakest class of its disks' tags.
    var pointClass: String {
        let classes = Set(points.map(\.pointClass))
        for c in [PointClass.unverified, .crashConsistent, .appConsistent] where classes.contains(c.rawValue) { return c.rawValue }
        return classes.sorted().first ?? ""
    }

    /// The machine points among `points`, oldest first.
    static func groups(_ points: [PointRecord]) -> [MachinePointGroup] {
        var byID: [String: [PointRecord]] = [:]
        for p in points {
            guard PointID.machineDisks(p.id) != nil else { continue }
            byID[p.id, default: []].append(p)
        }
        return byID.map { id, ps in
            MachinePointGroup(id: id, expected: PointID.machineDisks(id)!, points: ps.sorted { $0.diskID < $1.diskID })
        }.sorted { ($0.timeUnixMs, $0.id) < ($1.timeUnixMs, $1.id) }
    }
}
