import Testing
@testable import TidemarkServerCore

/// Records carry the payload staged at ingest to the uploader. The upload
/// queue keeps taken slots until it trims them; it must not keep their
/// payloads alive there (they would hold the staging budget, and memory).
@Suite struct UploadQueueTests {
    final class Payload: @unchecked Sendable {}

    func record(_ seq: UInt64, _ retained: Payload?) -> Spool.Record {
        Spool.Record(diskID: "d1", sequence: seq,
                     location: .init(fileIndex: 1, offset: 16 + seq * 4096, length: 4096), retained: retained)
    }

    @Test func takenRecordsReleaseTheirPayloadsWithTheBatch() throws {
        let queue = UploadQueue()
        weak var first: Payload?
        weak var second: Payload?
        do {
            let a = Payload(), b = Payload()
            first = a
            second = b
            queue.push([record(1, a), record(2, b)])
        }
        #expect(first != nil && second != nil, "the queue holds what waits in it")
        do {
            let batch = try #require(queue.nextBatch(countMax: 1, bytesMax: 1 << 20))
            #expect(batch.map(\.sequence) == [1])
            #expect(batch[0].retained === first)
            // Not uploaded this time: back at the head, still carrying its payload.
            queue.requeueFront(batch[...])
        }
        #expect(first != nil)
        do {
            let batch = try #require(queue.nextBatch(countMax: 8, bytesMax: 1 << 20))
            #expect(batch.map(\.sequence) == [1, 2])
            #expect(batch.allSatisfy { $0.retained != nil })
            queue.done(batch.count)
        }
        #expect(first == nil && second == nil, "a taken slot kept a payload alive")
    }
}
