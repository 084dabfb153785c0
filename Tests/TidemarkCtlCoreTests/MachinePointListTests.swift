import Foundation
import Testing
import TidemarkTarget
@testable import TidemarkCtlCore

/// `tidemarkctl points list` groups machine points: the manifests of one
/// machine point id, whole when every disk its id names holds it.
@Suite struct MachinePointListTests {
    func point(_ id: String, _ disk: String, _ seq: UInt64, _ cls: String = "crash-consistent", time: Int64 = 1_740_824_100_000) -> PointRecord {
        PointRecord(id: id, diskID: disk, pointClass: cls, timeUnixMs: time, sequence: seq)
    }

    @Test func machinePointsAreGroupedAndCheckedWhole() throws {
        let whole = "m2-20250301T101500Z-3fa9c01b7de2"
        let partial = "m3-20250301T101600Z-0011223344ff"
        let points = [
            point(whole, "a-sdb-1", 10), point("p-20250301T101000Z-aaaaaaaaaaaa", "a-sdb-1", 4),
            point(whole, "a-sdc-2", 7, "unverified"), point(partial, "a-sdc-2", 9, time: 1_740_824_160_000),
            point(partial, "a-sdb-1", 12, time: 1_740_824_160_000),
        ]
        let groups = MachinePointGroup.groups(points)
        #expect(groups.map(\.id) == [whole, partial], "oldest first")
        #expect(groups[0].complete && groups[0].expected == 2 && groups[0].diskIDs == ["a-sdb-1", "a-sdc-2"])
        #expect(groups[0].pointClass == "unverified", "the weakest class of its disks")
        #expect(!groups[1].complete && groups[1].expected == 3 && groups[1].diskIDs.count == 2)

        let json = try PointsCommand.render(json: points, groups: groups)
        let object = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
        let items = object?["points"] as? [[String: Any]] ?? []
        #expect(items.count == 5)
        // The fields of before are all there (additive).
        for item in items {
            for k in ["id", "disk_id", "class", "time_unix_ms", "time", "sequence", "scope"] { #expect(item[k] != nil, "\(k) in \(item)") }
        }
        let diskPoint = items.first { $0["id"] as? String == "p-20250301T101000Z-aaaaaaaaaaaa" }
        #expect(diskPoint?["scope"] as? String == "disk" && diskPoint?["machine_disks"] == nil)
        let member = items.first { $0["id"] as? String == partial }
        #expect(member?["scope"] as? String == "machine" && member?["machine_disks"] as? Int == 3 && member?["machine_complete"] as? Bool == false)
        let machine = object?["machine_points"] as? [[String: Any]] ?? []
        #expect(machine.count == 2)
        #expect(machine.first?["id"] as? String == whole && machine.first?["complete"] as? Bool == true && machine.first?["disks_expected"] as? Int == 2)
        #expect((machine.first?["disks"] as? [[String: Any]])?.map { $0["disk_id"] as? String } == ["a-sdb-1", "a-sdc-2"])
        #expect(machine.last?["complete"] as? Bool == false)
    }

    @Test func anEmptyTargetListsNoMachinePoint() throws {
        let dir = NSTemporaryDirectory() + "tidemark-machine-list-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // An empty target lists nothing, machine points included.
        let empty = try PointsCommand.list(targetDir: dir, diskID: nil, json: true)
        // Keys sorted, as every --json output (JSONOutput).
        #expect(empty == "{\"machine_points\":[],\"points\":[]}\n")
    }
}
