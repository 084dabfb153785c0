import TidemarkSurface
import TidemarkSystem
import TidemarkTarget
import TidemarkWire

/// What `tidemarkctl points list --json` prints: {"points":[...],
/// "machine_points":[...]}, the points ordered by (disk, sequence), the
/// machine points oldest first.
public struct PointsListing: Codable, Sendable, Equatable {
    public var points: [Point]
    public var machinePoints: [MachinePoint]

    /// One recovery point of one disk that can be materialized.
    public struct Point: Codable, Sendable, Equatable {
        public var id: String
        public var diskID: String
        /// "crash-consistent", "app-consistent" or "unverified".
        public var pointClass: String
        public var timeUnixMs: Int64
        /// `timeUnixMs` as ISO 8601 UTC with milliseconds.
        public var time: String
        public var sequence: UInt64
        /// "disk", or "machine" for one disk's part of a machine point.
        public var scope: String
        /// Of a machine point's part: how many disks the point spans.
        public var machineDisks: Int?
        /// Of a machine point's part: whether every one of them holds it.
        public var machineComplete: Bool?

        enum CodingKeys: String, CodingKey {
            case id
            case diskID = "disk_id"
            case pointClass = "class"
            case timeUnixMs = "time_unix_ms"
            case time
            case sequence
            case scope
            case machineDisks = "machine_disks"
            case machineComplete = "machine_complete"
        }
    }

    /// A machine point: one id tagged on several disks at one instant.
    public struct MachinePoint: Codable, Sendable, Equatable {
        public var id: String
        /// The weakest class of its disks' tags.
        public var pointClass: String
        public var timeUnixMs: Int64
        public var time: String
        /// How many disks the point spans (its id says so).
        public var disksExpected: Int
        /// Whether every one of them holds it.
        public var complete: Bool
        public var disks: [Disk]

        public struct Disk: Codable, Sendable, Equatable {
            public var diskID: String
            public var sequence: UInt64
            public var pointClass: String

            enum CodingKeys: String, CodingKey {
                case diskID = "disk_id"
                case sequence
                case pointClass = "class"
            }
        }

        enum CodingKeys: String, CodingKey {
            case id
            case pointClass = "class"
            case timeUnixMs = "time_unix_ms"
            case time
            case disksExpected = "disks_expected"
            case complete
            case disks
        }
    }

    enum CodingKeys: String, CodingKey {
        case points
        case machinePoints = "machine_points"
    }

    init(_ records: [PointRecord], groups: [MachinePointGroup]) {
        let byID = Dictionary(groups.map { ($0.id, $0) }) { a, _ in a }
        points = records.map {
            let g = byID[$0.id]
            return Point(id: $0.id, diskID: $0.diskID, pointClass: $0.pointClass, timeUnixMs: $0.timeUnixMs,
                         time: Format.isoTime(unixMs: $0.timeUnixMs), sequence: $0.sequence,
                         scope: g == nil ? "disk" : "machine", machineDisks: g?.expected, machineComplete: g?.complete)
        }
        machinePoints = groups.map { g in
            MachinePoint(id: g.id, pointClass: g.pointClass, timeUnixMs: g.timeUnixMs, time: Format.isoTime(unixMs: g.timeUnixMs),
                         disksExpected: g.expected, complete: g.complete,
                         disks: g.points.map { MachinePoint.Disk(diskID: $0.diskID, sequence: $0.sequence, pointClass: $0.pointClass) })
        }
    }
}

public enum PointsCommand {
    /// `tidemarkctl points list`: the recovery points that can be
    /// materialized, ordered by (disk, sequence), then the machine points
    /// among them grouped (one id tagged on several disks at one instant;
    /// docs/points-and-freeze.md). Text: a table (id, disk, class, time,
    /// sequence), then a table of machine points (id, class, time, how many
    /// of its disks hold it, which). JSON: one `PointsListing` object.
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
        if json { return try render(json: points, groups: groups) }
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

    static func render(json points: [PointRecord], groups: [MachinePointGroup]) throws -> String {
        try JSONOutput.line(PointsListing(points, groups: groups))
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
