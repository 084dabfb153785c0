import TidemarkSystem

extension ChunkSet {
    /// The chunk indices an extent touches (extents are chunk-aligned, so it
    /// covers them whole; the last chunk of the disk may be short). The set
    /// was made from the disk's geometry.
    func chunks(of e: TargetExtent) -> Range<UInt64> {
        chunks(ofBytes: e.offset..<e.end)
    }
}
