import Glibc
import Testing
import TidemarkSystem
import TidemarkTesting
@testable import TidemarkWire

/// One chunk of a test segment: all zero, or data (distinct bytes per chunk,
/// some with a single non-zero byte at the very end or start).
private enum TestChunk {
    case zero
    case data(seed: UInt8, onlyByte: Int?)

    func bytes(_ n: Int) -> [UInt8] {
        switch self {
        case .zero:
            return [UInt8](repeating: 0, count: n)
        case .data(let seed, let onlyByte?):
            var b = [UInt8](repeating: 0, count: n)
            b[min(onlyByte, n - 1)] = seed | 1
            return b
        case .data(let seed, nil):
            return (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) | 0x80 }
        }
    }
    var isZero: Bool { if case .zero = self { true } else { false } }
}

/// Runs the compactor over chunks laid out one after the other in a buffer,
/// as the reader leaves them: `runs` are (first chunk number, chunks)
/// groups of consecutive chunks at `chunkBytes` spacing on the device; each
/// run is handed over in pieces of `pieceChunks` chunks. The last chunk of
/// the last run may be `lastChunkBytes` long. Checks the extents, payload
/// and zero count against a model computed without the compactor.
private func check(
    _ chunks: [TestChunk], runs: [(UInt64, Int)], chunkBytes: Int = 4096, pieceChunks: Int = 3,
    lastChunkBytes: Int? = nil, sourceLocation: SourceLocation = #_sourceLocation
) {
    precondition(runs.reduce(0) { $0 + $1.1 } == chunks.count)
    // Lay the chunks out and build the model.
    var laidOut: [UInt8] = []
    var modelPayload: [UInt8] = []
    var modelExtents: [SegmentExtent] = []
    var modelZeros: UInt64 = 0
    var pieces: [(UInt64, Range<Int>)] = []
    var i = 0
    for (r, (first, count)) in runs.enumerated() {
        var chunkInRun = 0
        while chunkInRun < count {
            let inPiece = min(pieceChunks, count - chunkInRun)
            let pieceStart = laidOut.count
            let pieceOffset = (first + UInt64(chunkInRun)) * UInt64(chunkBytes)
            for k in 0..<inPiece {
                let isLast = r == runs.count - 1 && chunkInRun + k == count - 1
                let n = isLast ? (lastChunkBytes ?? chunkBytes) : chunkBytes
                let bytes = chunks[i].bytes(n)
                laidOut += bytes
                let offset = pieceOffset + UInt64(k * chunkBytes)
                let kind: ExtentKind = chunks[i].isZero ? .zero : .data
                if chunks[i].isZero { modelZeros += 1 } else { modelPayload += bytes }
                if let last = modelExtents.last, last.kind == kind, last.offset + UInt64(last.length) == offset {
                    modelExtents[modelExtents.count - 1].length += UInt32(n)
                } else {
                    modelExtents.append(SegmentExtent(offset: offset, length: UInt32(n), kind: kind))
                }
                i += 1
            }
            pieces.append((pieceOffset, pieceStart..<laidOut.count))
            chunkInRun += inPiece
        }
    }
    let buffer = AlignedBuffer(count: max(1, laidOut.count), alignment: 4096)
    laidOut.withUnsafeBytes { buffer.pointer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    var compactor = SegmentPayloadCompactor(chunkBytes: chunkBytes)
    for (offset, range) in pieces { compactor.add(offset: offset, range: range, in: buffer.bytes) }
    #expect(compactor.extents == modelExtents, sourceLocation: sourceLocation)
    #expect(compactor.zeroChunks == modelZeros, sourceLocation: sourceLocation)
    #expect(compactor.payloadBytes == modelPayload.count, sourceLocation: sourceLocation)
    let payload = Array(UnsafeRawBufferPointer(start: buffer.pointer, count: compactor.payloadBytes))
    let firstDifference = zip(payload, modelPayload).enumerated().first { $0.element.0 != $0.element.1 }?.offset
    #expect(Bool(payload == modelPayload),
            "payload is not the data chunks concatenated (first difference at byte \(firstDifference.map(String.init) ?? "none"))",
            sourceLocation: sourceLocation)
}

private func d(_ s: UInt8) -> TestChunk { .data(seed: s, onlyByte: nil) }
private let z = TestChunk.zero

@Suite struct SegmentPayloadCompactorTests {
    @Test func noZeroChunks() {
        check([d(1), d(2), d(3), d(4), d(5)], runs: [(10, 5)])
    }

    @Test func zeroChunksAtTheStart() {
        check([z, z, d(1), d(2), d(3)], runs: [(0, 5)])
        check([z, d(1), d(2), d(3), d(4), d(5), d(6), d(7)], runs: [(0, 8)])
    }

    @Test func zeroChunksInTheMiddle() {
        check([d(1), d(2), z, d(3), z, z, z, d(4), d(5)], runs: [(7, 9)])
    }

    @Test func zeroChunksAtTheEnd() {
        check([d(1), d(2), d(3), z, z], runs: [(0, 5)])
    }

    @Test func allZero() {
        check([z, z, z, z, z, z, z], runs: [(3, 7)])
        check([z], runs: [(0, 1)])
    }

    @Test func almostZeroChunksAreData() {
        check([z, .data(seed: 9, onlyByte: 4095), z, .data(seed: 3, onlyByte: 0), z], runs: [(0, 5)])
    }

    /// Runs that are not adjacent on the device are separate extents even
    /// when of the same kind; a short last chunk (the end of the device).
    @Test func separateRunsAndAShortLastChunk() {
        check([d(1), z, z, d(2), z, d(3), d(4), z], runs: [(0, 3), (10, 2), (20, 3)], lastChunkBytes: 1000)
        check([z, z, d(1), d(2)], runs: [(0, 2), (5, 2)], lastChunkBytes: 512)
        check([d(1), z], runs: [(0, 1), (9, 1)], lastChunkBytes: 100)
    }

    /// Random layouts, pieces of several sizes.
    @Test func randomSegments() {
        var rng = SplitMix64(seed: 0xC0FFEE)
        for round in 0..<200 {
            let count = Int.random(in: 1...64, using: &rng)
            let zeroShare = [0, 1, 3, 5, 8][round % 5]  // of 8
            let chunks: [TestChunk] = (0..<count).map { i in
                Int.random(in: 0..<8, using: &rng) < zeroShare ? .zero : d(UInt8(truncatingIfNeeded: i &+ round))
            }
            var runs: [(UInt64, Int)] = []
            var left = count
            var next: UInt64 = UInt64.random(in: 0..<100, using: &rng)
            while left > 0 {
                let n = Int.random(in: 1...left, using: &rng)
                runs.append((next, n))
                next += UInt64(n) + UInt64.random(in: 1...3, using: &rng)
                left -= n
            }
            check(chunks, runs: runs, chunkBytes: [4096, 8192][round % 2], pieceChunks: Int.random(in: 1...9, using: &rng),
                  lastChunkBytes: round % 3 == 0 ? 4096 - 512 : nil)
        }
    }
}
