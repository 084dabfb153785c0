import Foundation
import Testing
import TidemarkSurface
import TidemarkSystem
import TidemarkTarget
import TidemarkTesting
@testable import TidemarkCtlCore

/// The `--json` reports of tidemarkctl recover and keys: each is a Codable
/// model printed by `JSONOutput` as one line, keys sorted. The goldens pin
/// the field names scripts read.
@Suite struct ReportTests {
    let point = PointRecord(id: "web1-sdb-0a1b2c3d4e5f-44", diskID: "web1-sdb-0a1b2c3d4e5f", pointClass: "app-consistent",
                            timeUnixMs: 1_714_566_896_789, sequence: 44)

    @Test func recoverGoldenJSON() throws {
        var r = RecoverCommand.Result(point: point, bytes: 1 << 30, path: "/srv/restore/sdb.img")
        #expect(try r.output(json: false) == r.summary + "\n")
        #expect(try r.output(json: true) == #"{"bytes":1073741824,"lineage_inferred_below":[],"point":{"class":"app-consistent","disk_id":"web1-sdb-0a1b2c3d4e5f","id":"web1-sdb-0a1b2c3d4e5f-44","sequence":44,"time":"2024-05-01T12:34:56.789Z","time_unix_ms":1714566896789},"to":"/srv/restore/sdb.img","unproven_sequences":[]}"# + "\n")
        r.unprovenSequences = [9, 3]
        r.lineageInferredBelow = [5]
        let report = try JSONDecoder().decode(RecoverReport.self, from: Data(try r.output(json: true).utf8))
        #expect(report.unprovenSequences == [3, 9] && report.lineageInferredBelow == [5])
    }

    @Test func generatedKeyReportNamesTheIdOnly() throws {
        let dir = try TestEnv.tempDir("ctl-key-report")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/replication.key"
        let line = try KeysCommand.generateReplicationKey(out: path, json: true)
        let report = try JSONDecoder().decode(GeneratedKeyReport.self, from: Data(line.utf8))
        let key = try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(report.path == path && report.keyID.count == 16)
        #expect(line == #"{"key_id":""# + report.keyID + #"","path":""# + path + "\"}\n")
        #expect(key.count == 64 && !line.contains(key.prefix(8)))
    }
}
