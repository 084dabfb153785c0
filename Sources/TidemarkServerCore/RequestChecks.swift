import TidemarkTarget
import TidemarkWire

/// The checks of what agents send, before the server computes anything
/// from it or stores anything (docs/wire-format.md, section 6 and the
/// session rules). Pure functions: every value that arrives from the
/// network is untrusted, and nothing here does arithmetic on one that can
/// trap — every sum is checked, and every computation on a disk's geometry
/// happens only after `DiskGeometry.problem` found it valid.
enum RequestChecks {
    /// An `openDisk` of agent `agentID` (the name in its certificate, which
    /// its hello repeated), against the record already stored for the disk
    /// (nil: none yet). Order: the geometry on the wire, the stored owner,
    /// the disk id's namespace, then the stored geometry and key.
    static func openDisk(agentID: String, diskID: String, sizeBytes: UInt64, chunkSizeBytes: UInt32, keyID: UInt64,
                         stored: DiskRecord?) throws {
        if let problem = DiskGeometry.problem(sizeBytes: sizeBytes, chunkSizeBytes: chunkSizeBytes) {
            throw ProtocolViolation(code: 400, "openDisk of disk \(diskID) refused: \(problem) (docs/wire-format.md, section 6); nothing was stored")
        }
        if let stored, stored.ownerAgentID != agentID {
            throw ProtocolViolation(code: 403, "disk \(diskID) belongs to agent \(stored.ownerAgentID), not \(agentID)")
        }
        guard DiskNamespace.belongs(diskID, to: agentID) else {
            throw ProtocolViolation(code: 403, "disk id '\(diskID)' is not one agent \(agentID) may use: an agent opens only disk ids of the form \(DiskNamespace.form(of: agentID)) with the agent id of its certificate (docs/wire-format.md, session rule 8); nothing was stored")
        }
        guard let existing = stored else { return }
        guard existing.sizeBytes == sizeBytes, existing.chunkSizeBytes == chunkSizeBytes else {
            throw ProtocolViolation(code: 409, "disk \(diskID) is stored with size \(existing.sizeBytes) and chunk size \(existing.chunkSizeBytes), the agent reports \(sizeBytes) and \(chunkSizeBytes); a resized disk needs a new disk id")
        }
        guard existing.keyID == keyID else {
            throw ProtocolViolation(code: 409, "disk \(diskID) is stored under replication key id \(String(existing.keyID, radix: 16)), the agent uses \(String(keyID, radix: 16))")
        }
    }

    /// What makes a stored disk record unusable (nil: nothing): a record
    /// written by an older server that did not check the geometry, or one
    /// damaged or edited by hand.
    static func storedRecordProblem(_ r: DiskRecord) -> String? {
        if let problem = DiskGeometry.problem(sizeBytes: r.sizeBytes, chunkSizeBytes: r.chunkSizeBytes) { return problem }
        if r.ownerAgentID.isEmpty { return "it names no owner agent" }
        return nil
    }

    /// A `digestRequest` for chunks [first, first + count) of an opened disk
    /// whose (valid) record is `record`.
    static func digestRange(diskID: String, first: UInt64, count: UInt32, record: DiskRecord) throws {
        let chunks = DiskGeometry.chunkCount(sizeBytes: record.sizeBytes, chunkSizeBytes: record.chunkSizeBytes)
        let (end, overflow) = first.addingReportingOverflow(UInt64(count))
        guard count >= 1, !overflow, end <= chunks else {
            let range = overflow ? "\(first) + \(count) (past 2^64)" : "\(first)..<\(end)"
            throw ProtocolViolation(code: 400, "digest request for chunks \(range) of disk \(diskID), which has \(chunks) chunks (0..<\(chunks)); ask only for chunks inside the disk")
        }
    }

    /// What to do with a received segment.
    enum SegmentVerdict: Equatable {
        /// The next sequence: spool it.
        case append
        /// At or below what is spooled already: acknowledge again, store nothing.
        case duplicate
    }

    /// A segment's header fields against the disk's (valid) record and the
    /// highest sequence appended so far. `extents` are (offset, length).
    static func segment(diskID: String, sequence: UInt64, keyID: UInt64, diskSizeBytes: UInt64, chunkSizeBytes: UInt32,
                        extents: [(offset: UInt64, length: UInt64)], record: DiskRecord, appended: UInt64) throws -> SegmentVerdict {
        guard SegmentSequence.isValid(sequence) else {
            throw ProtocolViolation(code: 400, "segment \(diskID) #\(sequence): sequence numbers are \(SegmentSequence.min) to \(SegmentSequence.max) (docs/wire-format.md, section 6)")
        }
        if sequence <= appended { return .duplicate }
        let (expected, overflow) = appended.addingReportingOverflow(1)
        guard !overflow, sequence == expected else {
            throw ProtocolViolation(code: 409, "segment \(diskID) #\(sequence) out of order: expected #\(overflow ? "none (the disk's sequences are used up)" : String(expected))")
        }
        guard keyID == record.keyID else {
            throw ProtocolViolation(code: 409, "segment \(diskID) #\(sequence) sealed with key id \(String(keyID, radix: 16)), the disk uses \(String(record.keyID, radix: 16))")
        }
        guard diskSizeBytes == record.sizeBytes, chunkSizeBytes == record.chunkSizeBytes else {
            throw ProtocolViolation(code: 409, "segment \(diskID) #\(sequence) describes another disk geometry (size \(diskSizeBytes), chunk size \(chunkSizeBytes)) than the disk's (size \(record.sizeBytes), chunk size \(record.chunkSizeBytes))")
        }
        for (i, e) in extents.enumerated() {
            let (end, overflow) = e.offset.addingReportingOverflow(e.length)
            guard !overflow, end <= record.sizeBytes else {
                throw ProtocolViolation(code: 400, "segment \(diskID) #\(sequence) has an extent past the end of the disk (extent \(i): offset \(e.offset), length \(e.length); the disk has \(record.sizeBytes) bytes)")
            }
        }
        return .append
    }
}
