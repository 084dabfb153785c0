import Testing
import TidemarkWire

/// The limits every process server applies to values from the network
/// before it computes or stores anything (docs/wire-format.md, section 6).
@Suite struct DiskGeometryTests {
    @Test func chunkSizeBoundaries() {
        let size: UInt64 = 1 << 30
        for bad: UInt32 in [0, 1, 3, 512, 2048, 4095, 4097, 6144, 65535, (1 << 20) - 1, (1 << 20) + 1, 1 << 21, 1 << 31, UInt32.max - 1, UInt32.max] {
            let p = DiskGeometry.problem(sizeBytes: size, chunkSizeBytes: bad)
            #expect(p?.contains("chunk size \(bad) is not a power of two from 4096 to 1048576 bytes") == true, "\(bad): \(String(describing: p))")
        }
        for good: UInt32 in [4096, 8192, 65536, 1 << 19, 1 << 20] {
            #expect(DiskGeometry.problem(sizeBytes: size, chunkSizeBytes: good) == nil, "\(good)")
        }
    }

    @Test func diskSizeBoundaries() {
        let max = DiskGeometry.sizeBytesMax
        #expect(max == 256 << 40)
        for bad: UInt64 in [0, max + 1, max * 2, UInt64.max - 65535, UInt64.max - 1, UInt64.max, 1 << 63] {
            let p = DiskGeometry.problem(sizeBytes: bad, chunkSizeBytes: 65536)
            #expect(p?.contains("disk size \(bad) is not 1 to \(max) bytes") == true, "\(bad): \(String(describing: p))")
        }
        for good: UInt64 in [1, 4095, 4096, 65537, max - 1, max] {
            #expect(DiskGeometry.problem(sizeBytes: good, chunkSizeBytes: 4096) == nil, "\(good)")
            #expect(DiskGeometry.problem(sizeBytes: good, chunkSizeBytes: 1 << 20) == nil, "\(good)")
        }
    }

    @Test func chunkCountsOfValidGeometries() {
        #expect(DiskGeometry.chunkCount(sizeBytes: 1, chunkSizeBytes: 4096) == 1)
        #expect(DiskGeometry.chunkCount(sizeBytes: 4096, chunkSizeBytes: 4096) == 1)
        #expect(DiskGeometry.chunkCount(sizeBytes: 4097, chunkSizeBytes: 4096) == 2)
        #expect(DiskGeometry.chunkCount(sizeBytes: DiskGeometry.sizeBytesMax, chunkSizeBytes: 4096) == 1 << 36)
        #expect(DiskGeometry.chunkCount(sizeBytes: DiskGeometry.sizeBytesMax - 1, chunkSizeBytes: 1 << 20) == 1 << 28)
        #expect(DiskGeometry.chunkCountMax == 1 << 36)
        // The largest chunk index times the largest chunk size, plus a whole
        // segment, stays far from 2^64: nothing derived from a valid geometry overflows.
        let (_, overflow) = (DiskGeometry.chunkCountMax * UInt64(DiskGeometry.chunkSizeBytesMax))
            .addingReportingOverflow(UInt64(WireLimits.segmentBytesMax))
        #expect(!overflow)
    }

    @Test func sequenceBoundaries() {
        #expect(!SegmentSequence.isValid(0))
        #expect(SegmentSequence.isValid(1))
        #expect(SegmentSequence.isValid(SegmentSequence.max))
        #expect(!SegmentSequence.isValid(SegmentSequence.max + 1))
        #expect(!SegmentSequence.isValid(UInt64.max))
        #expect(SegmentSequence.max < UInt64(Int64.max))
    }

    @Test func diskIDsBelongToTheirAgent() {
        let hex = "0123456789ab"
        for kernel in ["sdb", "sdb1", "vda", "nvme0n1p1", "dm-0", "dm-12", "loop7", "md127", "mmcblk0p1", "cciss!c0d0", "xvda"] {
            #expect(DiskNamespace.belongs("agent-a-\(kernel)-\(hex)", to: "agent-a"), "\(kernel)")
        }
        let notAgentA = [
            "agent-b-sdb-\(hex)",              // another agent's
            "agent-a-sdb-0123456789AB",        // uppercase hex
            "agent-a-sdb-0123456789a",         // 11 digits
            "agent-a--\(hex)",                 // no kernel name
            "agent-a-\(hex)",                  // no kernel name
            "agent-a-0sdb-\(hex)",             // starts with a digit
            "agent-a-b-sdb-\(hex)",            // agent-a-b's disk
            "agent-a-sdb-x-\(hex)",            // a letter group after '-'
            "agent-a-sd b-\(hex)",
            "agent-a-sdb-\(hex)-",
            "agent-asdb-\(hex)",
            "agent-a",
            "",
            "sdb-\(hex)",
            "agent-a-sdb-\(hex)\u{0}",
        ]
        for id in notAgentA {
            #expect(!DiskNamespace.belongs(id, to: "agent-a"), "\(id)")
        }
        // 13 digits: no '-' before the last 12.
        #expect(!DiskNamespace.belongs("agent-a-sdb-0123456789abc", to: "agent-a"))
        #expect(DiskNamespace.belongs("agent-a-b-sdb-\(hex)", to: "agent-a-b"))
        #expect(!DiskNamespace.belongs("agent-a-sdb-\(hex)", to: ""))
        #expect(!DiskNamespace.belongs("agent-a-sdb-\(hex)", to: "agent"))   // kernel name "a-sdb" has a letter group
        #expect(!DiskNamespace.belongs("agent-a-dm-0-\(hex)", to: "agent-a-dm"))
    }

    /// No disk id is of the form for two different agent ids: a prefix of
    /// one agent id followed by '-' can never claim the other's disks.
    @Test func namespacesDoNotOverlap() {
        let agents = ["a", "a-b", "a-b-c", "a-dm", "a-sdb", "agent", "agent-a", "agent-a-0", "x-1", "x"]
        let kernels = ["sdb", "dm-0", "dm-1-2", "b", "b-1", "sdb1", "c", "0", "dm"]
        for agent in agents {
            for kernel in kernels {
                let id = "\(agent)-\(kernel)-0123456789ab"
                let claimants = agents.filter { DiskNamespace.belongs(id, to: $0) }
                #expect(claimants.count <= 1, "\(id) is claimed by \(claimants)")
            }
        }
    }
}
