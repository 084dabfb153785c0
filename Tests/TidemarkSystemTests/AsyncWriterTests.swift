import Foundation
import Testing
import TidemarkSystem
import TidemarkTesting

@Suite struct AsyncWriterTests {
    final class Keeper {
        let buffer: AlignedBuffer
        init(_ b: AlignedBuffer) { buffer = b }
    }

    /// Copied and no-copy writes mixed, more than the queue depth of each,
    /// into a file: the file holds exactly what was written.
    @Test func copiedAndUncopiedWritesLand() throws {
        let dir = try TestEnv.tempDir("asyncwriter")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/out.img"
        let fd = try FileDescriptor(open: path, [.readWrite, .create, .truncate], mode: 0o600)
        let writer = try AsyncWriter(fd: fd, queueDepth: 2, bufferBytes: 8192)
        var expected = [UInt8](repeating: 0, count: 40 * 8192)
        for i in 0..<40 {
            let b = AlignedBuffer(count: 8192, zeroed: false)
            b.bytes.initializeMemory(as: UInt8.self, repeating: UInt8(i + 1))
            expected.replaceSubrange((i * 8192)..<((i + 1) * 8192), with: repeatElement(UInt8(i + 1), count: 8192))
            if i % 3 == 0 {
                try writer.write(UnsafeRawBufferPointer(b.bytes), at: UInt64(i * 8192))
            } else {
                try writer.write(UnsafeRawBufferPointer(b.bytes), at: UInt64(i * 8192), keeping: Keeper(b))
            }
        }
        try writer.flush()
        try fd.dataSync()
        #expect(Array(try Data(contentsOf: URL(fileURLWithPath: path))) == expected)
    }
}
