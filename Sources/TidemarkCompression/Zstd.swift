import CTidemarkCompression
import Glibc
import TidemarkSystem

/// zstd compression with one context reused across calls (the C side is
/// `CTidemarkCompression.h`). Not thread-safe: one per worker.
public final class ZstdCompressor: @unchecked Sendable {
    private let ctx: OpaquePointer
    public let level: Int32

    /// The levels zstd accepts (negative levels are the fast modes; 0 means
    /// zstd's default, 3).
    public static var levels: ClosedRange<Int32> { Int32(tm_zstd_min_level())...Int32(tm_zstd_max_level()) }

    private static func check(_ level: Int32) throws {
        guard levels.contains(level) else {
            throw TidemarkError(.invalidArgument, "zstd compression level \(level) is out of range",
                                hint: "use a level in \(levels.lowerBound)...\(levels.upperBound); 1 is fast, 19 is small")
        }
    }

    public init(level: Int32) throws {
        try Self.check(level)
        guard let c = tm_zstd_cctx_new() else {
            throw SystemError(call: "ZSTD_createCCtx", errno: ENOMEM, context: "creating a zstd compression context")
        }
        ctx = c
        self.level = level
    }

    deinit { tm_zstd_cctx_free(ctx) }

    /// Compresses src into dst; returns the compressed length, or nil when the
    /// result would not be smaller than src (caller then stores src as is).
    /// dst needs at most `src.count - 1` bytes: a result that does not fit
    /// there is not smaller anyway.
    /// `level` overrides the compressor's level for this call (it must be
    /// in `levels`; the context is reused across levels).
    public func compress(_ src: UnsafeRawBufferPointer, into dst: UnsafeMutableRawBufferPointer, level: Int32? = nil) throws -> Int? {
        let level = level ?? self.level
        try Self.check(level)
        guard src.count > 0, let d = dst.baseAddress, dst.count > 0 else { return nil }
        let r = tm_zstd_compress(ctx, level, d, dst.count, src.baseAddress, src.count)
        if r < 0 {
            throw SystemError(call: "ZSTD_compressCCtx", errno: Int32(-r), context: "compressing \(src.count) bytes at level \(level)")
        }
        return r == 0 ? nil : Int(r)
    }

    /// The largest compressed size of n bytes (ZSTD_compressBound).
    public static func compressBound(_ n: Int) -> Int { tm_zstd_compress_bound(n) }
}

/// zstd decompression with one context reused across calls. Not thread-safe:
/// one per worker.
public final class ZstdDecompressor: @unchecked Sendable {
    private let ctx: OpaquePointer

    public init() throws {
        guard let c = tm_zstd_dctx_new() else {
            throw SystemError(call: "ZSTD_createDCtx", errno: ENOMEM, context: "creating a zstd decompression context")
        }
        ctx = c
    }

    deinit { tm_zstd_dctx_free(ctx) }

    /// Decompresses exactly `expected` bytes into dst (which must hold them);
    /// throws .corrupt when src is not one valid zstd frame of exactly that
    /// many bytes. Never writes beyond `expected` bytes.
    public func decompress(_ src: UnsafeRawBufferPointer, into dst: UnsafeMutableRawBufferPointer, expected: Int) throws {
        precondition(expected >= 0 && expected <= dst.count, "ZstdDecompressor: \(expected) bytes expected, buffer holds \(dst.count)")
        var err: UnsafePointer<CChar>? = nil
        // A non-empty scratch pointer keeps zstd's contract when expected is 0.
        var one: UInt8 = 0
        let r = withUnsafeMutableBytes(of: &one) { scratch in
            tm_zstd_decompress(ctx, dst.baseAddress ?? scratch.baseAddress!, expected,
                               src.baseAddress ?? UnsafeRawPointer(scratch.baseAddress!), src.count, &err)
        }
        if r < 0 {
            let why = err.map { String(cString: $0) } ?? "error \(-r)"
            throw TidemarkError(.corrupt, "compressed data is damaged: zstd: \(why) (\(src.count) bytes, \(expected) expected)")
        }
        guard r == expected else {
            throw TidemarkError(.corrupt, "compressed data decompresses to \(r) bytes, expected \(expected)")
        }
    }
}
