import ArgumentParser
import Foundation
import Glibc
import TidemarkAgentCore
import TidemarkServerCore
import TidemarkSystem
import TidemarkTarget
import TidemarkTracking

/// Benchmarks that run in-process. The device-level ones (fio references,
/// mirror first copy, tracer write-path cost) are in scripts/bench.sh, which
/// calls this for the bitmap figures. Results go to BENCHMARKS.md by hand,
/// with the command that produced them.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tidemark-bench",
        abstract: "Tidemark in-process benchmarks.",
        subcommands: [ScanBench.self, StoreBench.self])
}

/// The process server's upload step alone: storing spooled segments in a
/// local-directory target one at a time (file and directory fsynced per
/// segment, as the uploader did before batches) and in batches
/// (`putSegments`: objects fsynced in parallel, one directory fsync per
/// batch), alternating, on a target directory of the caller's choice.
struct StoreBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store",
        abstract: "Store segments in a target directory one at a time and in batches (the uploader's step).")
    @Option(help: "Directory to create the scratch target in (removed afterwards).") var dir = "/var/tmp"
    @Option(help: "Segments stored per round.") var segments = 20
    @Option(name: .customLong("segment-kib"), help: "Bytes per segment, in KiB.") var segmentKiB = 4096
    @Option(help: "Segments per batch.") var batch = ServerLimits.uploadBatchSegmentsMax
    @Option(help: "Threads writing and fsyncing a batch (the caller's included).") var threads = ServerLimits.uploadSyncThreads
    @Option(help: "Rounds of each way, alternating; medians are reported.") var rounds = 5

    func run() throws {
        let root = dir + "/tidemark-store-bench-\(getpid())"
        defer { _ = try? runRemove(root) }
        let target = try TargetRepository(localDirectory: root)
        let chunk: UInt32 = 64 << 10
        let perSegmentChunks = UInt64(segmentKiB) * 1024 / UInt64(chunk)
        let disk = DiskRecord(diskID: "bench", ownerAgentID: "bench", sizeBytes: UInt64(segments) * perSegmentChunks * UInt64(chunk) * UInt64(2 * rounds),
                              chunkSizeBytes: chunk, keyID: 1)
        try target.putDisk(disk)
        var rng = SplitMix64(seed: 7)
        var bytes = [UInt8](repeating: 0, count: segmentKiB * 1024)
        bytes.withUnsafeMutableBytes { b in
            let w = b.bindMemory(to: UInt64.self)
            for i in w.indices { w[i] = rng.next() }
        }
        var nextSequence: UInt64 = 1
        func makePuts() -> [SegmentPut] {
            (0..<segments).map { _ in
                let seq = nextSequence
                nextSequence += 1
                let e = TargetExtent(offset: (seq - 1) * perSegmentChunks * UInt64(chunk), length: perSegmentChunks * UInt64(chunk), zero: false)
                var b = bytes
                b[0] = UInt8(truncatingIfNeeded: seq)
                return SegmentPut(diskID: disk.diskID, sequence: seq, extents: [e], point: nil, bytes: b)
            }
        }
        let pool = WorkerPool(threads: max(0, threads - 1))
        defer { pool.shutdown() }
        var single: [Double] = [], batched: [Double] = []
        for _ in 0..<rounds {
            var puts = makePuts()
            sync()
            var t0 = monotonicNanoseconds()
            for p in puts {
                try p.bytes.withUnsafeBytes {
                    try target.putSegment(diskID: p.diskID, sequence: p.sequence, extents: p.extents, point: nil, bytes: $0)
                }
            }
            single.append(Double(monotonicNanoseconds() - t0) / 1e6)
            puts = makePuts()
            sync()
            t0 = monotonicNanoseconds()
            var at = 0
            while at < puts.count {
                let part = Array(puts[at..<min(at + batch, puts.count)])
                let r = target.putSegments(part, pool: pool)
                if let f = r.failure { throw f.error }
                at += part.count
            }
            batched.append(Double(monotonicNanoseconds() - t0) / 1e6)
        }
        guard try target.committedSequence(diskID: disk.diskID) == nextSequence - 1 else {
            throw TidemarkError(.state, "the target does not hold every stored sequence (a bug)")
        }
        func median(_ v: [Double]) -> Double { v.sorted()[v.count / 2] }
        let mib = Double(segments * segmentKiB) / 1024
        print("store \(segments) segments of \(segmentKiB) KiB (\(Int(mib)) MiB) in \(root):")
        func ms(_ v: Double) -> String { String(format: "%.1f", v) }
        print("  one at a time: median \(ms(median(single))) ms (\(Int(mib / median(single) * 1000)) MiB/s); rounds: \(single.map(ms).joined(separator: " "))")
        print("  batches of \(batch), \(threads) threads: median \(ms(median(batched))) ms (\(Int(mib / median(batched) * 1000)) MiB/s); rounds: \(batched.map(ms).joined(separator: " "))")
    }

    private func runRemove(_ path: String) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/rm")
        p.arguments = ["-rf", path]
        try p.run()
        p.waitUntilExit()
    }
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
    @Flag(help: "Keep the whole drain and listing on one thread (for comparison; the agent splits large ones over the CPUs).") var serial = false

    func run() throws {
        let nrChunks = diskTiB << 40 / (chunkKiB << 10)
        let nrWords = Int((nrChunks + 63) / 64)
        let words = try MappedWords(anonymousWordCount: nrWords)
        let bitmapBytes = Double(nrWords * 8)
        var rng = SplitMix64(seed: 42)
        var drainTimes: [Double] = [], snapTimes: [Double] = [], listTimes: [Double] = [], persistTimes: [Double] = []
        var dirtySeen: UInt64 = 0, extentsSeen = 0, wordsSeen = 0
        // Reused across drains, as DiskSession does.
        var drained = serial ? DrainWords(parallelMinWords: .max, parallelMinEntries: .max) : DrainWords()
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
        let split = !serial && DrainWords.canSplit && nrWords >= drained.parallelMinWords
        print("threads: \(split ? "split in \(DrainWords.parts) parts over the CPUs (\(sysconf(Int32(_SC_NPROCESSORS_ONLN))))" : "one")")
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
