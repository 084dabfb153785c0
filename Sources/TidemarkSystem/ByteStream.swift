/// Reads and writes whole byte ranges; read returns 0 at end of stream.
public protocol ByteStream: AnyObject {
    func read(into: UnsafeMutableRawBufferPointer) throws -> Int
    func writeAll(_: UnsafeRawBufferPointer) throws
}
