import Foundation
import Testing
@testable import TidemarkSurface

/// The control-socket protocol's models: their JSON (golden, so a change of
/// the wire form is seen), round trips, and the errors a request that does
/// not fit gets.
@Suite struct ControlProtocolTests {
    func text(_ data: Data) -> String { String(decoding: data, as: UTF8.self) }
    func decodeRequest(_ s: String) throws(ControlProtocolError) -> ControlRequest { try ControlRequest.decode(Data(s.utf8)) }

    /// The error a request line gets, or nil when it decodes.
    func refusal(_ s: String) -> String? {
        do {
            _ = try decodeRequest(s)
            return nil
        } catch {
            return error.message
        }
    }

    @Test func requestGoldenJSON() throws {
        #expect(text(try ControlRequest.status.encoded()) == #"{"op":"status","version":1}"#)
        #expect(text(try ControlRequest.createPoint(disk: "/dev/sdb", appConsistent: true).encoded())
                == #"{"app_consistent":true,"disk":"/dev/sdb","op":"create-point","version":1}"#)
        #expect(text(try ControlRequest.createPoint(disk: nil, appConsistent: false).encoded())
                == #"{"app_consistent":false,"op":"create-point","scope":"machine","version":1}"#)
    }

    @Test func requestRoundTrip() throws {
        for r in [ControlRequest.status, .createPoint(disk: "/dev/loop0", appConsistent: false),
                  .createPoint(disk: "agent-sdb-0a1b2c", appConsistent: true), .createPoint(disk: nil, appConsistent: true)] {
            #expect(try decodeRequest(text(try r.encoded())) == r)
        }
        // app_consistent may be left out: a crash-consistent point.
        #expect(try decodeRequest(#"{"version":1,"op":"create-point","disk":"/dev/sdc"}"#) == .createPoint(disk: "/dev/sdc", appConsistent: false))
        // Without a disk, or with "scope":"machine": a machine point.
        #expect(try decodeRequest(#"{"version":1,"op":"create-point"}"#) == .createPoint(disk: nil, appConsistent: false))
        #expect(try decodeRequest(#"{"version":1,"op":"create-point","scope":"machine"}"#) == .createPoint(disk: nil, appConsistent: false))
        #expect(try decodeRequest(#"{"version":1,"op":"create-point","scope":"disk","disk":"/dev/sdc"}"#) == .createPoint(disk: "/dev/sdc", appConsistent: false))
    }

    @Test func requestsThatDoNotFitAreNamed() {
        #expect(refusal("not json") == "the request is not JSON: one JSON object on one line is expected")
        #expect(refusal(#"["op"]"#) == "the request is not a JSON object: one JSON object on one line is expected")
        #expect(refusal(#"{"op":"status"}"#)?.hasPrefix("the request has no \"version\": it comes from a tidemarkctl of another build") == true)
        #expect(refusal(#"{"version":2,"op":"status"}"#)
                == "the request is of control protocol version 2; this agent speaks version 1: use the tidemarkctl installed with this agent")
        #expect(refusal(#"{"version":"1","op":"status"}"#) == "request field \"version\" is not a whole number")
        #expect(refusal(#"{"version":1}"#) == "the request has no \"op\" (known: create-point, status)")
        #expect(refusal(#"{"version":1,"op":"reboot"}"#) == "unknown request 'reboot' (known: create-point, status)")
        #expect(refusal(#"{"version":1,"op":1}"#) == "request field \"op\" is not a string")
        #expect(refusal(#"{"version":1,"op":"status","disk":"/dev/sdb"}"#)
                == "unknown field \"disk\" in a 'status' request (it takes no other field)")
        #expect(refusal(#"{"version":1,"op":"create-point","disk":"/dev/sdb","force":true}"#)
                == "unknown field \"force\" in a 'create-point' request (it takes \"disk\", \"scope\", \"app_consistent\")")
        #expect(refusal(#"{"version":1,"op":"create-point","scope":"disk"}"#) == "a 'create-point' request of scope \"disk\" needs \"disk\" (the device path or disk id)")
        #expect(refusal(#"{"version":1,"op":"create-point","disk":""}"#) == "a 'create-point' request of scope \"disk\" needs \"disk\" (the device path or disk id)")
        #expect(refusal(#"{"version":1,"op":"create-point","scope":"machine","disk":"/dev/sdb"}"#)
                == "a machine point spans every disk of the agent: a 'create-point' request with \"scope\":\"machine\" names no \"disk\"")
        #expect(refusal(#"{"version":1,"op":"create-point","scope":"host"}"#) == "request field \"scope\" is \"disk\" or \"machine\", not \"host\"")
        // The string form of the flat protocol before version 1 is refused by name.
        #expect(refusal(#"{"version":1,"op":"create-point","disk":"/dev/sdb","app_consistent":"true"}"#)
                == "request field \"app_consistent\" is not true or false")
    }

    static let disk = DiskStatus(
        disk: "/dev/sdb", diskID: "web1-sdb-0a1b2c3d4e5f", rpoMs: 1500, committedThroughUnixMs: 1_700_000_000_000,
        committedSequence: 41, durableSequence: 42, nextSequence: 43, backlogBytes: 65536, toReadBytes: 0, windowBytes: 65536,
        bytesRead: 1 << 30, bytesSent: 1 << 29, segmentsSent: 128, zeroChunks: 7, compressionLevel: 3, compressionAuto: true,
        compressionStepsFaster: 1, compressionStepsSmaller: 2, lastFreezeMs: 2.5)

    @Test func replyGoldenJSON() throws {
        let status = ControlReply.status(AgentStatus(rssBytes: 52_428_800, disks: [Self.disk]))
        #expect(text(try JSONOutput.encode(status)) == #"{"ok":true,"status":{"disks":[{"backlog_bytes":65536,"bytes_read":1073741824,"bytes_sent":536870912,"committed_sequence":41,"committed_through_unix_ms":1700000000000,"compression_auto":true,"compression_level":3,"compression_steps_faster":1,"compression_steps_smaller":2,"disk":"/dev/sdb","disk_id":"web1-sdb-0a1b2c3d4e5f","durable_sequence":42,"last_freeze_ms":2.5,"next_sequence":43,"rpo_ms":1500,"segments_sent":128,"to_read_bytes":0,"window_bytes":65536,"zero_chunks":7}],"rss_bytes":52428800},"version":1}"#)
        let point = ControlReply.point(CreatedPoint(id: "p-1", scope: "disk", diskID: "web1-sdb-0a1b2c3d4e5f", pointClass: "crash-consistent",
                                                    sequence: 44, freezeMs: 1.25,
                                                    disks: [CreatedPointDisk(disk: "/dev/sdb", diskID: "web1-sdb-0a1b2c3d4e5f", pointClass: "crash-consistent", sequence: 44)]))
        #expect(text(try JSONOutput.encode(point))
                == #"{"ok":true,"point":{"class":"crash-consistent","disk_id":"web1-sdb-0a1b2c3d4e5f","disks":[{"class":"crash-consistent","disk":"/dev/sdb","disk_id":"web1-sdb-0a1b2c3d4e5f","sequence":44}],"freeze_ms":1.25,"id":"p-1","scope":"disk","sequence":44},"version":1}"#)
        let machine = ControlReply.point(CreatedPoint(id: "m2-1", scope: "machine", diskID: nil, pointClass: "unverified", sequence: nil, freezeMs: 3,
                                                      disks: [CreatedPointDisk(disk: "/dev/sdb", diskID: "b", pointClass: "crash-consistent", sequence: 5),
                                                              CreatedPointDisk(disk: "/dev/sdc", diskID: "c", pointClass: "unverified", sequence: 9)]))
        #expect(text(try JSONOutput.encode(machine))
                == #"{"ok":true,"point":{"class":"unverified","disks":[{"class":"crash-consistent","disk":"/dev/sdb","disk_id":"b","sequence":5},{"class":"unverified","disk":"/dev/sdc","disk_id":"c","sequence":9}],"freeze_ms":3,"id":"m2-1","scope":"machine"},"version":1}"#)
        #expect(text(try JSONOutput.encode(ControlReply.failure("disk '/dev/x' is not replicated by this agent")))
                == #"{"error":"disk '/dev/x' is not replicated by this agent","ok":false,"version":1}"#)
        // A disk with nothing committed yet: no committed-through time, no freeze.
        var fresh = Self.disk
        fresh.rpoMs = -1
        fresh.committedThroughUnixMs = nil
        fresh.lastFreezeMs = nil
        let line = text(try JSONOutput.encode(fresh))
        #expect(line.contains(#""rpo_ms":-1"#) && !line.contains("committed_through_unix_ms") && !line.contains("last_freeze_ms"))
    }

    @Test func replyRoundTrip() throws {
        let replies = [
            ControlReply.status(AgentStatus(rssBytes: 1, disks: [Self.disk, Self.disk])),
            .status(AgentStatus(rssBytes: 0, disks: [])),
            .point(CreatedPoint(id: "x", scope: "disk", diskID: "d", pointClass: "unverified", sequence: UInt64.max, freezeMs: 0,
                                disks: [CreatedPointDisk(disk: "/dev/x", diskID: "d", pointClass: "unverified", sequence: UInt64.max)])),
            .point(CreatedPoint(id: "m", scope: "machine", diskID: nil, pointClass: "crash-consistent", sequence: nil, freezeMs: 0.5,
                                disks: [CreatedPointDisk(disk: "/dev/x", diskID: "d", pointClass: "crash-consistent", sequence: 1)])),
            .failure("quote \" backslash \\ newline \n tab \t control \u{1} é"),
        ]
        for r in replies {
            #expect(try ControlReply.decode(try JSONOutput.encode(r), agent: "/run/a.sock") == r)
        }
    }

    @Test func repliesOfAnotherVersionAreRefused() {
        func refusal(_ s: String) -> String? {
            do {
                _ = try ControlReply.decode(Data(s.utf8), agent: "/run/a.sock")
                return nil
            } catch {
                return error.message
            }
        }
        #expect(refusal(#"{"ok":true,"rss_bytes":0,"disks":[]}"#)
                == "the agent on /run/a.sock answered without a protocol version: it is a tidemark-agent of another build; use the tidemarkctl installed with it")
        #expect(refusal(#"{"ok":true,"version":2}"#)
                == "the agent on /run/a.sock speaks control protocol version 2, this tidemarkctl version 1: use the tidemarkctl installed with the agent")
        #expect(refusal("garbage")?.hasPrefix("the agent on /run/a.sock sent a reply this tidemarkctl cannot read") == true)
    }

    @Test func jsonOutputIsOneSortedLine() throws {
        struct Sample: Encodable {
            var s = "a\"b\\c\n\u{1}é"
            var n = UInt64.max
            var i: Int64 = -3
            var e: [Int] = []
            var pairs = [[1, 2]]
            var t = true
            var d = 12.5
            var path = "/dev/sdb"
        }
        let line = try JSONOutput.line(Sample())
        #expect(line == #"{"d":12.5,"e":[],"i":-3,"n":18446744073709551615,"pairs":[[1,2]],"path":"/dev/sdb","s":"a\"b\\c\n\u0001é","t":true}"# + "\n")
        // A number JSON cannot hold is an error, not "nan" in the output.
        struct NaN: Encodable { var x = Double.nan }
        #expect(throws: EncodingError.self) { try JSONOutput.line(NaN()) }
    }
}

/// docs/metrics.md lists every metric the programs record.
@Suite struct MetricDocumentation {
    @Test func everyMetricIsDocumented() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let doc = try String(contentsOf: root.appendingPathComponent("docs/metrics.md"), encoding: .utf8)
        for name in MetricName.all {
            #expect(doc.contains("`\(name)`"), "docs/metrics.md does not list \(name)")
        }
        #expect(Set(MetricName.all).count == MetricName.all.count)
        for name in MetricName.all {
            #expect(name.hasPrefix("tidemark_agent_") || name.hasPrefix("tidemark_server_"))
            #expect(name.allSatisfy { $0.isLowercase || $0 == "_" }, "\(name) is not snake_case")
        }
    }
}
