import FuzzSupport
import TidemarkSystem
import TidemarkWire

@_cdecl("fuzz_frames_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    Fuzz.main(argc, argv) { data, size in fuzz(data!, size) }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = Fuzz.bytes(data, size)
    let reader = FrameReader(MemoryStream(input))
    reader.acceptedVersions = WireProtocol.acceptedVersions
    do {
        while let m = try reader.next() { _ = m }
    } catch {
        Fuzz.expectTyped(error, "fuzz-frames")
    }
    return 0
}
