import Foundation
import Glibc
import Testing
import TidemarkStorage
import TidemarkStorageTesting
import TidemarkSystem
import TidemarkTesting

/// `ImageWriter` on regular files (and, as root, on a loop device): every
/// byte lands where it was written, aligned or not, copied or not; zero
/// ranges are holes in a file and zeros on a device.
@Suite struct ImageWriterTests {
    struct TooSmall: Error, Equatable { var deviceBytes: UInt64 }

    func writer(_ path: String, size: UInt64, mode: ImageWriter.FileMode) throws -> ImageWriter {
        try ImageWriter(path: path, requiredSizeBytes: size, mode: mode, role: "test image", writesInFlight: 4,
                        writeBufferBytes: 64 << 10) { TooSmall(deviceBytes: $0) }
    }

    func contents(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }

    func allocatedBytes(_ path: String) -> UInt64 {
        var st = Glibc.stat()
        return stat(path, &st) == 0 ? UInt64(st.st_blocks) * 512 : 0
    }

    /// Writes a model's pieces: aligned and copied, aligned from aligned
    /// memory without a copy, unaligned (buffered), and across the odd tail.
    func writePieces(_ w: ImageWriter, size: Int, into model: inout [UInt8]) throws {
        let a = ImageWriter.directAlignmentBytes
        let pieces: [(offset: Int, length: Int, keep: Bool)] = [
            (0, 2 * a, false), (4 * a, 3 * a, true), (8 * a + 100, 1000, false), (10 * a, a, true),
            (12 * a, 5 * a + 17, true), (size - 300, 300, false),
        ]
        for (k, p) in pieces.enumerated() {
            let bytes = ObjectStoreConformance.bytes(p.length, seed: UInt64(k + 1)).map { $0 | 1 }
            model.replaceSubrange(p.offset..<(p.offset + p.length), with: bytes)
            if p.keep {
                let buffer = AlignedBuffer(count: (p.length + a - 1) / a * a)
                bytes.withUnsafeBytes { buffer.pointer.copyMemory(from: $0.baseAddress!, byteCount: p.length) }
                try w.write(UnsafeRawBufferPointer(buffer.slice(0, p.length)), at: UInt64(p.offset), keeping: buffer)
            } else {
                try bytes.withUnsafeBytes { try w.write($0, at: UInt64(p.offset)) }
            }
        }
        // Aligned offset and length, unaligned memory: copied, then direct.
        let odd = ObjectStoreConformance.bytes(a + 1, seed: 99).map { $0 | 1 }
        model.replaceSubrange((20 * a)..<(21 * a), with: odd[1...])
        try odd.withUnsafeBytes { try w.write(UnsafeRawBufferPointer(rebasing: $0[1...]), at: UInt64(20 * a), keeping: AlignedBuffer(count: a)) }
    }

    @Test func aFreshFileIsAllHolesAndHoldsEveryPiece() throws {
        let dir = try TestEnv.tempDir("image-file")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let size = 64 * 4096 + 1234
        let path = dir + "/image"
        #expect(FileManager.default.createFile(atPath: path, contents: Data(repeating: 0xAB, count: 3 * size)))
        let w = try writer(path, size: UInt64(size), mode: .holes(sizeBytes: UInt64(size)))
        #expect(!w.isBlockDevice && w.device == nil)
        #expect(try contents(path) == [UInt8](repeating: 0, count: size), "cut to nothing, then all holes of the size")
        var model = [UInt8](repeating: 0, count: size)
        try writePieces(w, size: size, into: &model)
        try w.zeroFresh(offset: 30 * 4096, length: 4096)  // nothing to do in a fresh file
        try w.sync()
        #expect(try contents(path) == model)
        #expect(allocatedBytes(path) < UInt64(size) / 2, "never-written ranges stay holes")
    }

    @Test func keepModeKeepsContentsUntilReset() throws {
        let dir = try TestEnv.tempDir("image-keep")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let size = 32 * 4096
        let path = dir + "/mirror"
        var model = ObjectStoreConformance.bytes(size, seed: 5).map { $0 | 1 }
        #expect(FileManager.default.createFile(atPath: path, contents: Data(model)))
        let w = try writer(path, size: UInt64(size), mode: .keep)
        try w.sync()
        #expect(try contents(path) == model)
        // A range made zero is a hole.
        let before = allocatedBytes(path)
        try w.zero(offset: 8 * 4096, length: 8 * 4096)
        try w.zero(offset: 0, length: 0)
        model.replaceSubrange((8 * 4096)..<(16 * 4096), with: [UInt8](repeating: 0, count: 8 * 4096))
        #expect(try contents(path) == model)
        #expect(allocatedBytes(path) <= before - 8 * 4096)
        // Reset: all holes of the new size.
        try w.resetToHoles(sizeBytes: UInt64(size + 4096))
        #expect(try contents(path) == [UInt8](repeating: 0, count: size + 4096))
        // A missing file is created.
        let fresh = try writer(dir + "/new", size: 0, mode: .keep)
        try fresh.write(UnsafeRawBufferPointer(AlignedBuffer(count: 4096).bytes), at: 4096)
        try fresh.sync()
        #expect(try contents(dir + "/new").count == 8192)
    }

    @Test func whatIsNeitherAFileNorADeviceIsRefused() throws {
        let dir = try TestEnv.tempDir("image-refused")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            _ = try writer(dir, size: 4096, mode: .keep)
            Issue.record("a directory was taken as an image")
        } catch let e as TidemarkError {
            #expect(e.kind == .invalidArgument && e.message == "test image \(dir) is neither a regular file nor a block device")
        }
        #expect(throws: SystemError.self) { _ = try writer(dir + "/missing-dir/image", size: 4096, mode: .holes(sizeBytes: 4096)) }
    }

    @Test(.requiresRoot) func aBlockDeviceIsZeroedWhereAskedAndMustBeLargeEnough() throws {
        let dir = try TestEnv.tempDir("image-device")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let size = 64 * 4096 + 512
        let loop = try LoopDevice(sizeBytes: 80 * 4096, in: dir, directIO: false)
        defer { loop.detach() }
        try sh("dd if=/dev/urandom of=\(loop.path) bs=4096 count=80 status=none")
        #expect(throws: TooSmall(deviceBytes: 80 * 4096)) { _ = try writer(loop.path, size: 81 * 4096, mode: .keep) }
        let w = try writer(loop.path, size: UInt64(size), mode: .holes(sizeBytes: UInt64(size)))
        #expect(w.isBlockDevice && w.device?.sizeBytes == 80 * 4096)
        try w.resetToHoles(sizeBytes: UInt64(size))  // a device is left as it is
        var model = [UInt8](repeating: 0, count: size)
        try w.zeroFresh(offset: 0, length: UInt64(size))
        try writePieces(w, size: size, into: &model)
        try w.zero(offset: 4 * 4096, length: 4096)
        model.replaceSubrange((4 * 4096)..<(5 * 4096), with: [UInt8](repeating: 0, count: 4096))
        try w.sync()
        let fd = try FileDescriptor(open: loop.path, .readOnly)
        var got = [UInt8](repeating: 0xEE, count: size)
        _ = try got.withUnsafeMutableBytes { try fd.read(into: $0, at: 0) }
        #expect(got == model)
    }
}
