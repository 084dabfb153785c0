import Testing
import TidemarkSurface

@Suite struct ByteCountTests {
    /// A nonzero count never reads as zero, and the unit steps at 1024.
    @Test(arguments: [
        (0, "0 bytes"), (1, "1 byte"), (1023, "1023 bytes"), (1024, "1.0 KiB"), (655_360, "640.0 KiB"),
        (1_048_524, "1023.9 KiB"), (1_048_525, "1.0 MiB"), (1 << 20, "1.0 MiB"), (5 << 29, "2.5 GiB"),
        (16 << 40, "16.0 TiB"), (UInt64.max, "16.0 EiB"),
    ] as [(UInt64, String)])
    func text(bytes: UInt64, expected: String) {
        #expect(ByteCount.text(bytes) == expected)
    }
}

@Suite struct DiskActivityTextTests {
    @Test func progressReadsAsAnOperatorExpects() {
        let a = DiskActivity(state: .initialCopy, bytesDone: 1 << 30, bytesTotal: 4 << 30, bytesPerSecond: Double(100 << 20), etaSeconds: 30.2)
        #expect(a.text == "initial copy 25% (1.0 GiB of 4.0 GiB, 100.0 MiB/s, ETA 31 s)")
        let r = DiskActivity(state: .resync, detail: "the target lost the disk", bytesDone: 0, bytesTotal: 1 << 20)
        #expect(r.text == "resync (the target lost the disk) 0% (0 bytes of 1.0 MiB)")
        #expect(DiskActivity(state: .protected).text == "protected")
        #expect(DiskActivity(state: .resync, bytesDone: 1, bytesTotal: 2, bytesPerSecond: 1, etaSeconds: 9000).text.hasSuffix("ETA 2 h 30 min)"))
    }
}
