import ArgumentParser
import Glibc
import TidemarkAgentCore
import TidemarkSystem
import TidemarkTracking

/// Benchmarks that run in-process. The device-level ones (fio references,
/// mirror first copy, tracer write-path cost) are in scripts/bench.sh, which
/// calls this for the bitmap figures. Results go to BENCHMARKS.md by hand,
/// with the command that produced them.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tidemark-bench",
        abstract: "Tidemark in-process benchmarks.",
        subcommands: [ScanBench.self])
}

struct ScanBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scan",
        abstract: "Drain and list the extents of a bitmap (default: 16 TiB at 64 KiB chunks, 1% dirty).")
    @Option(help: "Disk size covered by the bitmap, in TiB.") var diskTiB: UInt64 = 16
    @Option(help: "Chunk size in KiB.") var chunkKiB: UInt64 = 64
    @Option(help: "Fraction of chunks dirty, in percent.") var dirtyPercent: Double = 1
    @Option(help: "Dirty layout: clustered (1 MiB runs) or scattered (single chunks).") var layout: String = "clustered"
    @Option(help: "Repetitions; the median is reported.") var repeats: Int = 7
    @Flag(help: "Evict the bitmap from the caches between snapshot and clear (untimed), as the persist in between may.") var coldClear = false

    func run() throws {
        let nrChunks = diskTiB << 40 / (chunkKiB << 10)
        let nrWords = Int((nrChunks + 63) / 64)
        let words = try MappedWords(anonymousWordCount: nrWords)
        let bitmapBytes = Double(nrWords * 8)
        var rng = SplitMix64(seed: 42)
        var drainTimes: [Double] = [], snapTimes: [Double] = [], listTimes: [Double] = [], persistTimes: [Double] = []
        var dirtySeen: UInt64 = 0, extentsSeen = 0, wordsSeen = 0
        // Reused across drains, as DiskSession does.
        var drained = DrainWords()
        var extents: [ChunkExtent] = []
        var sparse = SparseWords()
        // Larger than the last-level cache: streaming through it evicts the bitmap.
        var evict = [UInt64](repeating: 1, count: coldClear ? 16 << 20 : 0)
        for _ in 0..<repeats {
            fill(words, nrChunks: nrChunks, rng: &rng)
            // Reference for the listing: a full scan of the raw bitmap.
            var check: [ChunkExtent] = []
            BitmapScan.extents(words.buffer, nrChunks: nrChunks, into: &check)
            var t0 = monotonicNanoseconds()
            DrainScan.snapshot(words, into: &drained)
            var tS = monotonicNanoseconds()
            // (DiskSession.drain persists the snapshot here.)
            if coldClear {
                evict.withUnsafeMutableBufferPointer { b in for i in b.indices { b[i] &+= 1 } }
                let now = monotonicNanoseconds()
                t0 += now - tS
                tS = now
            }
            DrainScan.clear(words, drained)
            let t1 = monotonicNanoseconds()
            // The drained words are what gets listed: no second pass over the bitmap.
            extents.removeAll(keepingCapacity: true)
            BitmapScan.extents(drained, nrChunks: nrChunks, into: &extents)
            let t2 = monotonicNanoseconds()
            // What DiskSession.drain hands to TrackingFile.persistSet.
            sparse.assign(drained)
            let t3 = monotonicNanoseconds()
            precondition(extents == check, "listing from the drained words differs from a full scan")
            var fromSparse: [ChunkExtent] = []
            BitmapScan.extents(sparse, nrChunks: nrChunks, into: &fromSparse)
            precondition(fromSparse == check, "the persisted set differs from the snapshot")
            drainTimes.append(Double(t1 - t0) / 1e9)
            snapTimes.append(Double(tS - t0) / 1e9)  // includes no eviction time
            listTimes.append(Double(t2 - t1) / 1e9)
            persistTimes.append(Double(t3 - t2) / 1e9)
            dirtySeen = drained.popcount
            wordsSeen = drained.count
            extentsSeen = extents.count
            precondition(words.nextNonZero(from: 0) == words.count, "drain left bits behind")
        }
        let drain = median(drainTimes), list = median(listTimes), persist = median(persistTimes)
        print("bitmap: \(diskTiB) TiB at \(chunkKiB) KiB chunks = \((nrWords * 8) >> 20) MiB of bits; \(layout) \(dirtyPercent)% dirty = \(dirtySeen) chunks in \(wordsSeen) words, \(extentsSeen) extents")
        print("drain (snapshot + clear): \(fmt(drain * 1e3)) ms = \(fmt(bitmapBytes / drain / 1e9)) GB/s of bitmap (snapshot \(fmt(median(snapTimes) * 1e3)) ms)")
        print("list extents (drained):   \(fmt(list * 1e3)) ms = \(fmt(bitmapBytes / list / 1e9)) GB/s of bitmap")
        print("drain + list:             \(fmt((drain + list) * 1e3)) ms = \(fmt(bitmapBytes / (drain + list) / 1e9)) GB/s of bitmap")
        print("(to SparseWords for persistSet: \(fmt(persist * 1e3)) ms, not in the figures above)")
    }

    func fill(_ w: MappedWords, nrChunks: UInt64, rng: inout SplitMix64) {
        let target = UInt64(Double(nrChunks) * dirtyPercent / 100)
        var set: UInt64 = 0
        let run: UInt64 = layout == "clustered" ? max(1, (1 << 20) / (chunkKiB << 10)) : 1
        while set < target {
            let start = rng.next() % (nrChunks - run)
            for c in start..<start + run {
                let before = w.base[Int(c / 64)]
                w.base[Int(c / 64)] = before | (1 << (c % 64))
                if before & (1 << (c % 64)) == 0 { set += 1 }
            }
        }
    }
}

struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E3779B97F4A7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) &* 0x94D049BB133111EB
        return z ^ (z >> 31)
    }
}

func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }
func fmt(_ x: Double) -> String { String(Double(Int(x * 100)) / 100) }

Bench.main()
