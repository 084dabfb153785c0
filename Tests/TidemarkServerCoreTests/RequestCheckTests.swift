import Testing
import TidemarkTarget
import TidemarkWire
@testable import TidemarkServerCore

/// Every handler's checks fed boundary values (0, 1, max-1, max, around
/// the limits): each bad value is refused cleanly (a `ProtocolViolation`
/// with a code and a message saying what and where), none traps.
@Suite struct RequestCheckTests {
    static let hex = "0123456789ab"
    static let agent = "agent-a"
    static let disk = "agent-a-sdb-\(hex)"
    static let record = DiskRecord(diskID: disk, ownerAgentID: agent, sizeBytes: 64 << 20, chunkSizeBytes: 65536, keyID: 7)

    func refusal(_ body: () throws -> Void) -> ProtocolViolation? {
        do {
            try body()
            return nil
        } catch let v as ProtocolViolation {
            return v
        } catch {
            Issue.record("not a protocol violation: \(error)")
            return nil
        }
    }

    @Test func openDiskGeometryBoundaries() {
        let badGeometries: [(UInt64, UInt32)] = [
            (UInt64.max, 65536), (UInt64.max - 1, 65536), (UInt64.max - 65535, 65536), (1 << 63, 4096),
            (DiskGeometry.sizeBytesMax + 1, 4096), (0, 65536),
            (1 << 30, 0), (1 << 30, 1), (1 << 30, 3), (1 << 30, 4095), (1 << 30, 4097), (1 << 30, (1 << 20) + 1),
            (1 << 30, 1 << 21), (1 << 30, UInt32.max), (UInt64.max, UInt32.max), (8 << 60, 3),
        ]
        for (size, chunk) in badGeometries {
            let v = refusal {
                try RequestChecks.openDisk(agentID: Self.agent, diskID: Self.disk, sizeBytes: size, chunkSizeBytes: chunk,
                                           keyID: 7, stored: nil)
            }
            #expect(v?.code == 400, "size \(size) chunk \(chunk): \(String(describing: v))")
            #expect(v?.message.contains("nothing was stored") == true)
        }
        for (size, chunk): (UInt64, UInt32) in [(1, 4096), (DiskGeometry.sizeBytesMax, 4096), (DiskGeometry.sizeBytesMax - 1, 1 << 20)] {
            #expect(refusal {
                try RequestChecks.openDisk(agentID: Self.agent, diskID: Self.disk, sizeBytes: size, chunkSizeBytes: chunk,
                                           keyID: 7, stored: nil)
            } == nil)
        }
    }

    @Test func openDiskOwnershipAndNamespace() {
        // Another agent's id form, existing or not: refused, nothing stored.
        var v = refusal {
            try RequestChecks.openDisk(agentID: "agent-b", diskID: Self.disk, sizeBytes: 64 << 20, chunkSizeBytes: 65536,
                                       keyID: 7, stored: nil)
        }
        #expect(v?.code == 403 && v?.message.contains("is not one agent agent-b may use") == true, "\(String(describing: v))")
        #expect(v?.message.contains("'agent-b-<kernel device name>-<12 lowercase hex digits>'") == true)
        v = refusal {
            try RequestChecks.openDisk(agentID: "agent-b", diskID: Self.disk, sizeBytes: 64 << 20, chunkSizeBytes: 65536,
                                       keyID: 7, stored: Self.record)
        }
        #expect(v?.code == 403 && v?.message.contains("belongs to agent agent-a, not agent-b") == true, "\(String(describing: v))")
        // A prefix of another agent's id cannot claim its disks.
        v = refusal {
            try RequestChecks.openDisk(agentID: "agent", diskID: Self.disk, sizeBytes: 64 << 20, chunkSizeBytes: 65536,
                                       keyID: 7, stored: nil)
        }
        #expect(v?.code == 403)
        // A free-form id (not of any agent's form).
        v = refusal {
            try RequestChecks.openDisk(agentID: Self.agent, diskID: "agent-a-disk", sizeBytes: 64 << 20, chunkSizeBytes: 65536,
                                       keyID: 7, stored: nil)
        }
        #expect(v?.code == 403)
        // The owner, with its own geometry and key: accepted; a mismatch: 409.
        #expect(refusal {
            try RequestChecks.openDisk(agentID: Self.agent, diskID: Self.disk, sizeBytes: 64 << 20, chunkSizeBytes: 65536,
                                       keyID: 7, stored: Self.record)
        } == nil)
        v = refusal {
            try RequestChecks.openDisk(agentID: Self.agent, diskID: Self.disk, sizeBytes: 64 << 20, chunkSizeBytes: 4096,
                                       keyID: 7, stored: Self.record)
        }
        #expect(v?.code == 409)
        v = refusal {
            try RequestChecks.openDisk(agentID: Self.agent, diskID: Self.disk, sizeBytes: 64 << 20, chunkSizeBytes: 65536,
                                       keyID: 8, stored: Self.record)
        }
        #expect(v?.code == 409)
    }

    @Test func storedRecordProblems() {
        func with(_ size: UInt64, _ chunk: UInt32, owner: String = "agent-a") -> DiskRecord {
            DiskRecord(diskID: Self.disk, ownerAgentID: owner, sizeBytes: size, chunkSizeBytes: chunk, keyID: 1)
        }
        #expect(RequestChecks.storedRecordProblem(with(UInt64.max, 65536)) != nil)
        #expect(RequestChecks.storedRecordProblem(with(1 << 30, 3)) != nil)
        #expect(RequestChecks.storedRecordProblem(with(1 << 30, 0)) != nil)
        #expect(RequestChecks.storedRecordProblem(with(0, 65536)) != nil)
        #expect(RequestChecks.storedRecordProblem(with(1 << 30, 65536, owner: "")) != nil)
        #expect(RequestChecks.storedRecordProblem(with(1 << 30, 65536)) == nil)
    }

    @Test func digestRangeBoundaries() {
        let chunks: UInt64 = (64 << 20) / 65536   // 1024
        let bad: [(UInt64, UInt32)] = [
            (UInt64.max, 1), (UInt64.max, 2048), (UInt64.max - 1, 2), (UInt64.max - 2047, 2048), (1 << 63, 1),
            (chunks, 1), (chunks - 1, 2), (0, 1025), (0, 0), (5, 0), (0, UInt32.max), (UInt64.max, UInt32.max),
        ]
        for (first, count) in bad {
            let v = refusal { try RequestChecks.digestRange(diskID: Self.disk, first: first, count: count, record: Self.record) }
            #expect(v?.code == 400, "\(first)+\(count): \(String(describing: v))")
            #expect(v?.message.contains("which has \(chunks) chunks") == true)
        }
        for (first, count): (UInt64, UInt32) in [(0, 1), (0, 1024), (chunks - 1, 1), (1000, 24)] {
            #expect(refusal { try RequestChecks.digestRange(diskID: Self.disk, first: first, count: count, record: Self.record) } == nil)
        }
        // The largest disk: 2^36 chunks.
        let big = DiskRecord(diskID: Self.disk, ownerAgentID: Self.agent, sizeBytes: DiskGeometry.sizeBytesMax, chunkSizeBytes: 4096, keyID: 1)
        #expect(refusal { try RequestChecks.digestRange(diskID: Self.disk, first: (1 << 36) - 2048, count: 2048, record: big) } == nil)
        #expect(refusal { try RequestChecks.digestRange(diskID: Self.disk, first: (1 << 36) - 2047, count: 2048, record: big) }?.code == 400)
    }

    func segment(sequence: UInt64 = 5, keyID: UInt64 = 7, size: UInt64 = 64 << 20, chunk: UInt32 = 65536,
                 extents: [(offset: UInt64, length: UInt64)] = [(0, 65536)], appended: UInt64 = 4) throws -> RequestChecks.SegmentVerdict {
        try RequestChecks.segment(diskID: Self.disk, sequence: sequence, keyID: keyID, diskSizeBytes: size, chunkSizeBytes: chunk,
                                  extents: extents, record: Self.record, appended: appended)
    }

    @Test func segmentSequenceBoundaries() throws {
        for bad in [0, SegmentSequence.max + 1, UInt64.max - 1, UInt64.max] {
            let v = refusal { _ = try segment(sequence: bad) }
            #expect(v?.code == 400 && v?.message.contains("sequence numbers are 1 to") == true, "\(bad): \(String(describing: v))")
            // Whatever the disk's state.
            #expect(refusal { _ = try segment(sequence: bad, appended: UInt64.max) }?.code == 400)
            #expect(refusal { _ = try segment(sequence: bad, appended: 0) }?.code == 400)
        }
        #expect(try segment(sequence: 1, appended: 0) == .append)
        #expect(try segment(sequence: 5, appended: 4) == .append)
        #expect(try segment(sequence: 4, appended: 4) == .duplicate)
        #expect(try segment(sequence: 1, appended: 4) == .duplicate)
        #expect(try segment(sequence: SegmentSequence.max, appended: SegmentSequence.max - 1) == .append)
        #expect(try segment(sequence: SegmentSequence.max, appended: SegmentSequence.max) == .duplicate)
        #expect(try segment(sequence: SegmentSequence.max, appended: UInt64.max) == .duplicate)
        let v = refusal { _ = try segment(sequence: 7, appended: 4) }
        #expect(v?.code == 409 && v?.message.contains("out of order: expected #5") == true, "\(String(describing: v))")
        #expect(refusal { _ = try segment(sequence: SegmentSequence.max, appended: 0) }?.code == 409)
    }

    @Test func segmentHeaderAgainstTheRecord() throws {
        #expect(refusal { _ = try segment(keyID: 8) }?.code == 409)
        #expect(refusal { _ = try segment(size: (64 << 20) + 1) }?.code == 409)
        #expect(refusal { _ = try segment(size: UInt64.max) }?.code == 409)
        #expect(refusal { _ = try segment(chunk: 4096) }?.code == 409)
        #expect(refusal { _ = try segment(chunk: 0) }?.code == 409)
        let badExtents: [[(offset: UInt64, length: UInt64)]] = [
            [(UInt64.max, 1)], [(UInt64.max - 65535, 65536)], [(64 << 20, 1)], [((64 << 20) - 65536, 65537)],
            [(0, 65536), (UInt64.max, UInt64(UInt32.max))], [(1 << 63, 1 << 63)],
        ]
        for extents in badExtents {
            let v = refusal { _ = try segment(extents: extents) }
            #expect(v?.code == 400 && v?.message.contains("past the end of the disk") == true, "\(extents): \(String(describing: v))")
        }
        #expect(try segment(extents: [((64 << 20) - 65536, 65536)]) == .append)
        #expect(try segment(extents: []) == .append)
    }

    @Test func limitsAreConsistent() {
        #expect(ServerLimits.relationProblem() == nil, "\(ServerLimits.relationProblem() ?? "")")
        // The whole-frame deadline: the base for a small frame, and a bounded
        // time even for the largest segment frame.
        #expect(ServerLimits.frameDeadlineMs(payloadBytes: 0) == ServerLimits.frameDeadlineBaseMs)
        let largest = ServerLimits.frameDeadlineMs(payloadBytes: WireLimits.framePayloadBytesMax)
        #expect(largest > ServerLimits.frameDeadlineBaseMs && largest <= 300_000, "\(largest)")
        #expect(ServerLimits.frameDeadlineMs(payloadBytes: WireLimits.controlPayloadBytesMax) < ServerLimits.idleTimeoutMs)
        #expect(ServerLimits.handshakeTimeoutMs < ServerLimits.idleTimeoutMs)
        // Target storage refuses the same disk geometries as the wire.
        #expect(EnvelopeFormat.chunkSizeBytesMin == DiskGeometry.chunkSizeBytesMin)
        #expect(EnvelopeFormat.chunkSizeBytesMax == DiskGeometry.chunkSizeBytesMax)
        #expect(EnvelopeFormat.diskSizeBytesMax == DiskGeometry.sizeBytesMax)
    }

    @Test func sourceAddressOfAPeer() {
        #expect(Connection.address(ofPeer: "127.0.0.1:5555") == "127.0.0.1")
        #expect(Connection.address(ofPeer: "[::1]:5555") == "::1")
        #expect(Connection.address(ofPeer: "[fe80::1%eth0]:1") == "fe80::1%eth0")
        #expect(Connection.address(ofPeer: "?") == "?")
    }
}
