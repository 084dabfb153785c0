import TidemarkSystem
import TidemarkWire

/// Sealed segments made by the real sealer, with a fixed test key: seeds
/// for the segment, spool and frame targets.
public enum TestSegments {
    /// The fixed test key (never a real one): bytes 0, 1, …, 31.
    public static let key: ReplicationKey = try! ReplicationKey(bytes: (0..<32).map { UInt8($0) })

    public static func sealed() throws -> [(String, [UInt8])] {
        let sealer = try SegmentSealer(key: key, compressionLevel: 3)
        let chunk: UInt32 = 4096
        let disk: UInt64 = 1 << 20
        var out: [(String, [UInt8])] = []
        let text = [UInt8](repeating: 0x61, count: 4096) + (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let noise = (0..<4096).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 13) }
        func seal(_ name: String, kind: SegmentKind = .data, sequence: UInt64, extents: [SegmentExtent], payload: [UInt8],
                  point: PointTag? = nil, version: UInt16 = SegmentFormat.version, level: Int32? = nil) throws {
            let s = try payload.withUnsafeBytes {
                try sealer.seal(kind: kind, diskID: "vdb", sequence: sequence, diskSizeBytes: disk, chunkSizeBytes: chunk,
                                extents: extents, payload: $0, point: point, formatVersion: version, compressionLevel: level)
            }
            out.append((name, s))
        }
        try seal("data-compressed", sequence: 1, extents: [SegmentExtent(offset: 0, length: 8192, kind: .data)], payload: text)
        try seal("data-raw", sequence: 2, extents: [SegmentExtent(offset: 8192, length: 4096, kind: .data)], payload: noise, level: 0)
        try seal("zero-and-data", sequence: 3, extents: [SegmentExtent(offset: 0, length: 4096, kind: .zero),
                                                         SegmentExtent(offset: 65536, length: 4096, kind: .data)], payload: noise)
        try seal("point", kind: .point, sequence: 4, extents: [], payload: [],
                 point: PointTag(id: "p-20261207-0001", pointClass: .crashConsistent, timeUnixMs: 1_796_000_000_000))
        try seal("v1", sequence: 5, extents: [SegmentExtent(offset: 100, length: 10, kind: .data)], payload: Array(noise[0..<10]), version: 1)
        try seal("v2", sequence: 6, extents: [SegmentExtent(offset: 4096, length: 4096, kind: .data)], payload: text.suffix(4096).map { $0 }, version: 2)
        return out
    }
}
