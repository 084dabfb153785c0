// The shutdown seal (docs/shutdown-seal.md): the armed region (pages 0-15)
// and the sealed region (page 16 and its extent pages).
// Mode byte: bit 0 selects the sealed region (else the armed one), bit 1
// recomputes the checksums (page CRC, disk entries' / extents' CRC) so
// decoding goes past them. The input is zero-padded to the region's size.
// Invariants: errors are ShutdownSeal.FormatError (the decoders' typed
// error), never a trap; decoding is a normal form: for y = decode(encode(x)),
// decode(encode(y)) == y; physical() of every covered file byte lies in an
// extent.
import Foundation
import FuzzSupport
import TidemarkSystem
import TidemarkTracking
@testable import TidemarkAgentCore

@_cdecl("fuzz_shutdown_seal_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    Fuzz.main(argc, argv, seeds: seeds) { data, size in fuzz(data, size) }
}

typealias Seal = ShutdownSeal

func bytes(_ b: AlignedBuffer) -> [UInt8] { Array(UnsafeRawBufferPointer(b.bytes)) }

func fixArmed(_ b: inout [UInt8]) {
    let n = min(Int(Fuzz.le(b, 108, as: UInt32.self)), 60)
    let entries = b.withUnsafeBytes { crc32c(UnsafeRawBufferPointer(rebasing: $0[4096..<(4096 + n * 1024)])) }
    Fuzz.putLE(&b, 124, entries)
    Fuzz.putLE(&b, 4092, b.withUnsafeBytes { Seal.pageCRC($0, at: 0) })
}

func fixSealed(_ b: inout [UInt8]) {
    let total = Int(Fuzz.le(b, 108, as: UInt32.self))
    if 4096 + total * 16 <= b.count {
        Fuzz.putLE(&b, 112, b.withUnsafeBytes { crc32c(UnsafeRawBufferPointer(rebasing: $0[4096..<(4096 + total * 16)])) })
    }
    Fuzz.putLE(&b, 4092, b.withUnsafeBytes { Seal.pageCRC($0, at: 0) })
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let all = Fuzz.bytes(data, size)
    guard let mode = all.first else { return 0 }
    var b = Array(all.dropFirst())
    if mode & 1 == 0 {
        if b.count < Seal.armedRegionBytes { b += [UInt8](repeating: 0, count: Seal.armedRegionBytes - b.count) }
        if mode & 2 != 0 { fixArmed(&b) }
        armed(b)
    } else {
        let pages = max(1, (b.count + 4095) / 4096)
        b += [UInt8](repeating: 0, count: pages * 4096 - b.count)
        if mode & 2 != 0 { fixSealed(&b) }
        sealed(b)
    }
    return 0
}


func armed(_ b: [UInt8]) {
    do {
        let x = try b.withUnsafeBytes { try Seal.decodeArmed($0) }
        let y = try bytes(Seal.encodeArmed(x)).withUnsafeBytes { try Seal.decodeArmed($0) }
        let z = try bytes(Seal.encodeArmed(y)).withUnsafeBytes { try Seal.decodeArmed($0) }
        Fuzz.check(y == z, "the armed record's decoding is not a normal form")
        var logical: UInt64 = 0
        while logical < UInt64(Seal.fileSizeBytes) {
            guard let (offset, run) = Seal.physical(logical, x.fileExtents) else {
                return Fuzz.check(false, "file byte \(logical) maps to no extent")
            }
            _ = offset
            Fuzz.check(run > 0, "empty run")
            logical += min(run, UInt64(Seal.fileSizeBytes))
        }
    } catch {
        Fuzz.expectTyped(error, "decodeArmed", also: { $0 is Seal.FormatError })
    }
}

func sealed(_ b: [UInt8]) {
    do {
        let x = try b.withUnsafeBytes { try Seal.decodeSealed($0) }
        let y = try bytes(Seal.encodeSealed(x)).withUnsafeBytes { try Seal.decodeSealed($0) }
        let z = try bytes(Seal.encodeSealed(y)).withUnsafeBytes { try Seal.decodeSealed($0) }
        Fuzz.check(y == z, "the sealed record's decoding is not a normal form")
        // Every field survives encode and decode, except a boot id that is
        // not valid UTF-8: it decodes with U+FFFD replacements, which the
        // encoder then cuts to the field's 63 bytes (harmless: boot ids are
        // only compared with boot ids decoded the same way).
        var x2 = x
        x2.bootID = y.bootID
        if x.kind == .sealed { Fuzz.check(y == x2, "a sealed record does not survive encode and decode") }
    } catch {
        Fuzz.expectTyped(error, "decodeSealed", also: { $0 is Seal.FormatError })
    }
}

func seeds() throws -> [(String, [UInt8])] {
    let nonce = (1...16).map { UInt8($0) }
    let disk = Seal.ArmedDisk(slot: 3, regionDev: 0x0800_0011, wholeDev: 0x0800_0010, chunkSizeBytes: 65536, startSector: 2048,
                              nrSectors: 2_097_152, nrChunks: 16384, attachedUnixNs: 1_796_000_000_000_000_000,
                              diskID: "vdb1", identity: "virtio-abc-part1", hrlPath: "/var/lib/tidemark/vdb1.hrl")
    let extents = [FileExtent(logical: 0, physical: 1 << 30, length: 512 << 10, flags: 0),
                   FileExtent(logical: 512 << 10, physical: 2 << 30, length: 512 << 10, flags: 0)]
    let armed = Seal.Armed(nonce: nonce, bootID: "0b7c6a8e-1d2f-4e5a-9b3c-7d8e9f0a1b2c", armedUnixNs: 1_796_000_000_000_000_000,
                           sealDev: 0x0800_0001, fileExtents: extents, sealPath: "/var/lib/tidemark/shutdown.seal", disks: [disk, disk])
    let sealed = Seal.Sealed(kind: .sealed, nonce: nonce, bootID: armed.bootID, unixNs: 1_796_000_000_100_000_000,
                             results: [Seal.DiskResult(slot: 3, status: .complete, firstExtent: 0, extentCount: 2, dirtyChunks: 5),
                                       Seal.DiskResult(slot: 4, status: .overflow, firstExtent: 2, extentCount: 0, dirtyChunks: 0)],
                             extents: [ChunkExtent(firstChunk: 0, chunkCount: 1), ChunkExtent(firstChunk: 100, chunkCount: 4)])
    let consumed = Seal.Sealed(kind: .consumed, nonce: nonce, bootID: armed.bootID, unixNs: 1, results: [], extents: [])
    // The armed seed without its zero tail (the target pads it back).
    var a = bytes(Seal.encodeArmed(armed))
    while a.count > 4096 + 2 * 1024 && a.last == 0 { a.removeLast() }
    return [
        ("armed", [0] + a),
        ("sealed", [1] + bytes(Seal.encodeSealed(sealed))),
        ("consumed", [1] + bytes(Seal.encodeSealed(consumed))),
        ("armed-fix", [2] + Array(a.prefix(4096 + 1024))),
    ]
}
