import Glibc
import Logging
import Testing
@testable import TidemarkSystem

/// The swift-log handler: journald priorities when standard error is the
/// journal, today's human format elsewhere, the process-wide level.
@Suite(.serialized) struct LogHandlerTests {
    @Test func terminalFormat() {
        let line = TidemarkLogHandler.format(level: .warning, message: "spool full", metadata: [:], journal: false,
                                             program: "tidemark-server", pid: 42, unixSeconds: 1_700_000_000)
        #expect(line == "2023-11-14T22:13:20Z tidemark-server[42] warning: spool full\n")
        let error = TidemarkLogHandler.format(level: .error, message: "x", metadata: [:], journal: false,
                                              program: "tidemark-agent", pid: 1, unixSeconds: 0)
        #expect(error == "1970-01-01T00:00:00Z tidemark-agent[1] error: x\n")
    }

    @Test func journalFormatPrefixesEveryLineWithItsPriority() {
        let levels: [(Logger.Level, Int)] = [(.trace, 7), (.debug, 7), (.info, 6), (.notice, 5), (.warning, 4), (.error, 3), (.critical, 2)]
        for (level, priority) in levels {
            #expect(TidemarkLogHandler.syslogPriority(level) == priority)
            #expect(TidemarkLogHandler.format(level: level, message: "m", metadata: [:], journal: true,
                                              program: "p", pid: 1, unixSeconds: 0) == "<\(priority)>m\n")
        }
        #expect(TidemarkLogHandler.format(level: .error, message: "first\nsecond", metadata: [:], journal: true,
                                          program: "p", pid: 1, unixSeconds: 0) == "<3>first\n<3>second\n")
    }

    /// A daemon's last words (the error it exits 1 with) are priority 3
    /// under the journal, so `journalctl -p err` shows them; elsewhere as given.
    @Test func fatalErrorsAreErrorsInTheJournal() {
        #expect(Log.fatalText("tidemark-agent: error: no disk\n", journal: true) == "<3>tidemark-agent: error: no disk\n")
        #expect(Log.fatalText("e: a\n  note: b\n", journal: true) == "<3>e: a\n<3>  note: b\n")
        #expect(Log.fatalText("tidemark-agent: error: no disk\n", journal: false) == "tidemark-agent: error: no disk\n")
    }

    @Test func metadataFollowsTheMessage() {
        let line = TidemarkLogHandler.format(level: .info, message: "connected", metadata: ["peer": "10.0.0.5", "disk": "sdb"],
                                             journal: true, program: "p", pid: 1, unixSeconds: 0)
        #expect(line == "<6>connected disk=sdb peer=10.0.0.5\n")
    }

    @Test func journalStreamMustNameStandardError() throws {
        var st = stat()
        #expect(fstat(2, &st) == 0)
        #expect(TidemarkLogHandler.streamMatches(journalStream: "\(st.st_dev):\(st.st_ino)", fd: 2))
        #expect(!TidemarkLogHandler.streamMatches(journalStream: "\(st.st_dev):\(st.st_ino &+ 1)", fd: 2))
        #expect(!TidemarkLogHandler.streamMatches(journalStream: "garbage", fd: 2))
        #expect(!TidemarkLogHandler.streamMatches(journalStream: "1:2:3", fd: 2))
    }

    @Test func loggersFollowTheProcessLevelUnlessTheySetTheirOwn() {
        let before = Log.level
        defer { Log.setLevel(swiftLog: before) }
        var own = Log.logger("test.own")
        let shared = Log.logger("test.shared")
        own.logLevel = .error
        Log.setLevel(.debug)
        #expect(shared.logLevel == .debug)
        #expect(own.logLevel == .error)
        Log.setLevel(.warning)
        #expect(shared.logLevel == .warning)
        #expect(Log.level == .warning)
    }
}
