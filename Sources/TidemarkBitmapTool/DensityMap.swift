/// How a disk's chunks are grouped into cells for the density map and the heat map.
struct DensityLayout: Equatable {
    let nrChunks: UInt64
    /// Chunks per cell (the last cell may hold fewer).
    let chunksPerCell: UInt64
    let columns: Int
    let rows: Int
    /// Cells that hold at least one chunk; the last row may be shorter than `columns`.
    let cellCount: Int

    /// The fewest chunks per cell that fit the disk in `columns * rowsMax` cells.
    init(nrChunks: UInt64, columns: Int, rowsMax: Int) {
        precondition(columns > 0 && rowsMax > 0)
        self.nrChunks = nrChunks
        self.columns = columns
        let cellsMax = UInt64(columns) * UInt64(rowsMax)
        chunksPerCell = max(1, (nrChunks + cellsMax - 1) / cellsMax)
        cellCount = Int((nrChunks + chunksPerCell - 1) / chunksPerCell)
        rows = max(1, (cellCount + columns - 1) / columns)
        assert(rows <= rowsMax && cellCount <= columns * rows)
    }

    func chunks(ofCell cell: Int) -> Range<UInt64> {
        let first = UInt64(cell) * chunksPerCell
        return first..<min(first + chunksPerCell, nrChunks)
    }

    /// Fraction of dirty chunks in each cell, 0...1.
    func fractions(_ bitmap: Bitmap) -> [Double] {
        (0..<cellCount).map { cell in
            let range = chunks(ofCell: cell)
            return Double(bitmap.count(from: range.lowerBound, to: range.upperBound)) / Double(range.count)
        }
    }
}

enum DensityMap {
    static let shades: [Character] = [" ", "░", "▒", "▓", "█"]

    /// ' ' clean, '█' all dirty; the three shades between split the rest in thirds, so that
    /// one dirty chunk in a cell is never drawn as clean and a cell is never drawn full unless it is.
    static func shade(_ fraction: Double) -> Character {
        if fraction <= 0 { return shades[0] }
        if fraction >= 1 { return shades[4] }
        if fraction <= 1.0 / 3 { return shades[1] }
        if fraction <= 2.0 / 3 { return shades[2] }
        return shades[3]
    }

    static let legend = "' ' clean  ░ up to 1/3 dirty  ▒ up to 2/3  ▓ more than 2/3  █ all dirty"

    /// The terminal map: one row per `columns` cells, each row starting with the byte offset
    /// of its first chunk, framed by '|' so clean cells at the row ends stay visible.
    static func text(_ bitmap: Bitmap, chunkSizeBytes: UInt32, columns: Int, rowsMax: Int) -> String {
        let layout = DensityLayout(nrChunks: bitmap.nrChunks, columns: columns, rowsMax: rowsMax)
        let fractions = layout.fractions(bitmap)
        let chunk = UInt64(chunkSizeBytes)
        let labels = (0..<layout.rows).map { row in
            Format.bytes(UInt64(row * columns) * layout.chunksPerCell * chunk)
        }
        let labelWidth = labels.map(\.count).max() ?? 0
        var out = ""
        for row in 0..<layout.rows {
            let start = row * columns
            let end = min(start + columns, layout.cellCount)
            out += Format.right(labels[row], labelWidth) + " |"
            out += String(fractions[start..<end].map(shade))
            out += "|\n"
        }
        return out
    }
}

/// The PNG heat map: a grid of square cells, white (clean) through dark red (all dirty).
enum HeatMap {
    static let widthPx = 512
    static let cellPx = 4
    static let rowsMax = 128
    static var columns: Int { widthPx / cellPx }

    static let clean: (UInt8, UInt8, UInt8) = (255, 255, 255)
    static let allDirty: (UInt8, UInt8, UInt8) = (139, 0, 0)
    /// Past the end of the disk in the last row.
    static let beyondDisk: (UInt8, UInt8, UInt8) = (200, 200, 200)

    /// White for a clean cell; otherwise from pale red (a single dirty chunk stays visible)
    /// to dark red at 100%.
    static func color(_ fraction: Double) -> (UInt8, UInt8, UInt8) {
        if fraction <= 0 { return clean }
        let t = 0.25 + 0.75 * min(fraction, 1)
        func mix(_ a: UInt8, _ b: UInt8) -> UInt8 { UInt8((Double(a) + (Double(b) - Double(a)) * t).rounded()) }
        return (mix(clean.0, allDirty.0), mix(clean.1, allDirty.1), mix(clean.2, allDirty.2))
    }

    struct Image {
        let width: Int
        let height: Int
        let layout: DensityLayout
        let png: [UInt8]
    }

    static func render(_ bitmap: Bitmap) -> Image {
        let layout = DensityLayout(nrChunks: bitmap.nrChunks, columns: columns, rowsMax: rowsMax)
        let fractions = layout.fractions(bitmap)
        let width = widthPx, height = layout.rows * cellPx
        var rgb = [UInt8](repeating: 0, count: width * height * 3)
        for row in 0..<layout.rows {
            for column in 0..<columns {
                let cell = row * columns + column
                let c = cell < layout.cellCount ? color(fractions[cell]) : beyondDisk
                for y in (row * cellPx)..<((row + 1) * cellPx) {
                    var p = (y * width + column * cellPx) * 3
                    for _ in 0..<cellPx {
                        rgb[p] = c.0; rgb[p + 1] = c.1; rgb[p + 2] = c.2
                        p += 3
                    }
                }
            }
        }
        return Image(width: width, height: height, layout: layout,
                     png: PNGEncoder.encode(width: width, height: height, rgb: rgb))
    }
}
