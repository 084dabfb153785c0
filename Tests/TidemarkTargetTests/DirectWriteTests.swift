import Foundation
import Glibc
import Testing
import TidemarkSystem
import TidemarkTesting
@testable import TidemarkTarget

/// Staged objects are written with O_DIRECT; where the device refuses the
/// alignment (EINVAL), the same bytes are written buffered instead. Real
/// ext4 on a loop device with 4 KiB logical sectors, written at 512-byte
/// alignment, makes the kernel refuse.
@Suite struct DirectWriteTests {
    @Test(.requiresRoot) func anAlignmentTheDeviceRefusesFallsBackToBufferedWrites() throws {
        let dir = try TestEnv.tempDir("direct-write")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let loop = try LoopDevice(sizeBytes: 64 << 20, in: dir, sectorSize: 4096)
        defer { loop.detach() }
        let mnt = dir + "/mnt"
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        try sh("mkfs.ext4 -q -F '\(loop.path)' && mount '\(loop.path)' '\(mnt)'")
        defer { _ = try? sh("umount '\(mnt)'") }

        let staging = SegmentStaging(bytesMax: 16 << 20, idleBuffersMax: 0)
        let extents = [TargetExtent(offset: 0, length: 65536, zero: false)]
        var rng = SplitMix64(seed: 9)
        // 4096 + 700 payload bytes: the object padded to 512 is not a multiple of 4096.
        let payload = (0..<4796).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        for alignment in [512, 4096] {
            let staged = try #require(payload.withUnsafeBytes {
                staging.stage(diskID: "host-a:sdb", extents: extents, point: nil, payload: $0)
            })
            let header = payload.withUnsafeBytes {
                Envelope.encodeHeader(kind: .segment, diskID: "host-a:sdb", sequence: 1,
                                      metadata: Metadata.encodeSegment(extents: extents, point: nil), payload: $0)
            }
            #expect((header.count + payload.count) % 4096 > 512, "the test needs an object whose 512-padding is short of 4096")
            let tmp = try ObjectFiles.writeTemporary(dir: mnt, name: "a\(alignment).seg", staged: staged, header: header,
                                                     alignment: alignment)
            let written = [UInt8](try Data(contentsOf: URL(fileURLWithPath: tmp)))
            #expect(written == header + payload, "alignment \(alignment)")
            unlink(tmp)
        }
        // The refusal is real: the same 512-aligned direct write fails with EINVAL here.
        let fd = try FileDescriptor(open: mnt + "/probe", [.writeOnly, .create, .direct])
        let buffer = AlignedBuffer(count: 4096)
        #expect(throws: SystemError.self) { try fd.write(UnsafeRawBufferPointer(buffer.slice(0, 512)), at: 0) }
    }
}
