// Segment headers: SegmentHeader.declaredHeaderBytes and decode (whole
// segment, and header prefix + segmentBytes). Invariants: a header that
// decodes re-encodes to exactly its bytes; the prefix decode agrees with
// the whole decode; the derived views (dataBytes, dataChunkDigests) work.
import FuzzSupport
import TidemarkSystem
@testable import TidemarkWire

@_cdecl("fuzz_segment_header_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    Fuzz.main(argc, argv, seeds: TestSegments.sealed) { data, size in fuzz(data, size) }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = Fuzz.bytes(data, size)
    input.withUnsafeBytes { b in
        var declared: Int? = nil
        do { declared = try SegmentHeader.declaredHeaderBytes(b) } catch { Fuzz.expectTyped(error, "declaredHeaderBytes") }
        do {
            let (h, n) = try SegmentHeader.decode(b)
            Fuzz.check(declared == n, "decode accepted a header whose declared length \(String(describing: declared)) is not \(n)")
            Fuzz.check(h.encodedBytes == n, "encodedBytes \(h.encodedBytes) != header bytes \(n)")
            Fuzz.check(h.encode() == Array(b[0..<n]), "header does not re-encode to its bytes")
            // Only the header, with the segment's size.
            let (h2, n2) = try SegmentHeader.decode(UnsafeRawBufferPointer(rebasing: b[0..<n]), segmentBytes: b.count)
            Fuzz.check(h2 == h && n2 == n, "the prefix decode differs")
            _ = h.dataBytes
            if let digests = h.dataChunkDigests {
                Fuzz.check(digests.count == h.chunkDigests.count, "dataChunkDigests count")
            }
        } catch {
            Fuzz.expectTyped(error, "SegmentHeader.decode")
        }
        // A prefix of the input as the header of a segment of the input's size.
        if let declared, declared <= b.count {
            do {
                _ = try SegmentHeader.decode(UnsafeRawBufferPointer(rebasing: b[0..<declared]), segmentBytes: b.count)
            } catch {
                Fuzz.expectTyped(error, "SegmentHeader.decode(prefix)")
            }
        }
    }
    return 0
}
