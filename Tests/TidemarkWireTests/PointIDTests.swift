import Foundation
import Testing
import TidemarkWire

/// Point ids: a point of one disk is `p-…` as before; a machine point's id
/// says how many disks it spans, and only such an id is read as one.
@Suite struct PointIDTests {
    @Test func idsSayWhatTheySpan() {
        let date = Date(timeIntervalSince1970: 1_740_824_100)  // 2025-03-01T10:15:00Z
        let one = PointID.make(disks: 1, at: date)
        #expect(one.hasPrefix("p-20250301T101500Z-") && one.count == "p-20250301T101500Z-".count + 12, "\(one)")
        #expect(PointID.machineDisks(one) == nil)
        let two = PointID.make(disks: 2, at: date)
        #expect(two.hasPrefix("m2-20250301T101500Z-"), "\(two)")
        #expect(PointID.machineDisks(two) == 2)
        #expect(PointID.machineDisks(PointID.make(disks: 12, at: date)) == 12)
        #expect(PointID.make(disks: 2, at: date) != two, "random part")
    }

    @Test func onlyTheConventionReadsAsAMachinePoint() {
        #expect(PointID.machineDisks("m3-20250301T101500Z-3fa9c01b7de2") == 3)
        for id in ["m-1", "m1-x", "m0-x", "m02-x", "m12345-x", "mx-1", "m2", "m2x-1", "p-20250301T101500Z-3fa9c01b7de2", "nightly", "", "M2-x"] {
            #expect(PointID.machineDisks(id) == nil, "\(id)")
        }
    }
}
