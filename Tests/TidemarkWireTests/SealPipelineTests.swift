import Foundation
import Testing
@testable import TidemarkWire

/// What the tests' deliver closures saw, from the pipeline's threads.
private final class Seen: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [Int] = []
    private var active = 0
    private(set) var maxActive = 0
    func append(_ v: Int) { lock.withLock { values.append(v) } }
    var all: [Int] { lock.withLock { values } }
    var count: Int { lock.withLock { values.count } }
    func enter() { lock.withLock { active += 1; maxActive = max(maxActive, active) } }
    func leave() { lock.withLock { active -= 1 } }
}

private struct Refused: Error {}

@Suite struct SealPipelineTests {
    func sealers(_ n: Int) throws -> [SegmentSealer] {
        let key = try testKey(3)
        return try (0..<n).map { _ in try SegmentSealer(key: key, compressionLevel: 1) }
    }

    /// Segments that finish sealing out of order are still delivered in the
    /// order they were submitted; at most one per sealer seals at a time and
    /// at most `depth` are submitted and not yet delivered.
    @Test func deliversInSubmissionOrderWithinBounds() throws {
        let p = SealPipeline(sealers: try sealers(3), depth: 4)
        let seen = Seen()
        for i in 0..<60 {
            try p.submit({ _ in
                seen.enter()
                defer { seen.leave() }
                usleep(UInt32((60 - i) % 5) * 2_000)  // later segments often finish first
                return [UInt8(i)]
            }, deliver: { seen.append(Int($0[0])) })
            #expect(i + 1 - seen.count <= 4)
        }
        p.finish()
        #expect(seen.all == Array(0..<60))
        #expect(seen.maxActive <= 3)
        #expect(p.error == nil)
    }

    /// A failed segment stops delivery: those before it are delivered, it and
    /// every later one are not (the numbering would have a gap), and the next
    /// submit throws the error.
    @Test func failureStopsDelivery() throws {
        let p = SealPipeline(sealers: try sealers(2), depth: 3)
        let seen = Seen()
        var thrown = false
        for i in 0..<20 {
            do {
                try p.submit({ _ in
                    if i == 5 { throw Refused() }
                    if i == 6 { usleep(5_000) }
                    return [UInt8(i)]
                }, deliver: { seen.append(Int($0[0])) })
            } catch is Refused {
                thrown = true
                break
            }
        }
        p.finish()
        #expect(seen.all == Array(0..<5))
        #expect(p.error is Refused)
        // Some submit after the failure threw it, unless all 20 were queued first.
        if !thrown { #expect(throws: Refused.self) { try p.submit({ _ in [] }, deliver: { _ in }) } }
    }

    /// The sealers are real: a segment sealed through the pipeline opens.
    @Test func sealsWithItsSealers() throws {
        let p = SealPipeline(sealers: try sealers(2), depth: 2)
        let payload = [UInt8](repeating: 0x5A, count: 65536)
        var out: [UInt8] = []
        let lock = NSLock()
        try p.submit({ sealer in
            try payload.withUnsafeBytes {
                try sealer.seal(kind: .data, diskID: "d1", sequence: 1, diskSizeBytes: 1 << 20, chunkSizeBytes: 65536,
                                extents: [SegmentExtent(offset: 0, length: 65536, kind: .data)], payload: $0, point: nil)
            }
        }, deliver: { b in lock.withLock { out = b } })
        p.finish()
        let (_, opened) = try out.withUnsafeBytes { try SegmentOpener(key: try testKey(3)).open($0, diskID: "d1", sequence: 1) }
        #expect(opened == payload)
    }
}
