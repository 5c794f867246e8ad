//! How each record that waits on local disk is written and read back.

use std::io::{Read, Write};

use super::partition::RoutedEntry;
use super::scan::{Order, PingCopy, ReadEntry};
use crate::storage::spill::{read_array, Sortable, Spilled};
use crate::wire::report_id::REPORT_ID_LEN;

impl Sortable for Order {
    fn encode<W: Write>(&self, out: &mut W) -> std::io::Result<()> {
        out.write_all(&self.file.to_le_bytes())?;
        out.write_all(&self.record.to_le_bytes())
    }

    fn decode<R: Read>(input: &mut R) -> std::io::Result<Self> {
        Ok(Order {
            file: u32::from_le_bytes(read_array(input)?),
            record: u32::from_le_bytes(read_array(input)?),
        })
    }
}

impl Sortable for PingCopy {
    fn encode<W: Write>(&self, out: &mut W) -> std::io::Result<()> {
        let len = u32::try_from(self.ping_id.len()).map_err(std::io::Error::other)?;
        out.write_all(&len.to_le_bytes())?;
        out.write_all(self.ping_id.as_bytes())?;
        self.order.encode(out)
    }

    fn decode<R: Read>(input: &mut R) -> std::io::Result<Self> {
        let mut ping_id = vec![0; u32::from_le_bytes(read_array(input)?) as usize];
        input.read_exact(&mut ping_id)?;
        Ok(PingCopy {
            ping_id: String::from_utf8(ping_id).map_err(std::io::Error::other)?,
            order: Order::decode(input)?,
        })
    }
}

impl Sortable for ReadEntry {
    fn encode<W: Write>(&self, out: &mut W) -> std::io::Result<()> {
        self.order.encode(out)?;
        out.write_all(&self.batch.to_le_bytes())?;
        out.write_all(&self.report_id)?;
        self.shares.encode(out)
    }

    fn decode<R: Read>(input: &mut R) -> std::io::Result<Self> {
        Ok(ReadEntry {
            order: Order::decode(input)?,
            batch: u32::from_le_bytes(read_array(input)?),
            report_id: read_array::<REPORT_ID_LEN>(input)?,
            shares: Spilled::decode(input)?,
        })
    }
}

impl Sortable for RoutedEntry {
    fn encode<W: Write>(&self, out: &mut W) -> std::io::Result<()> {
        out.write_all(&self.slot.to_le_bytes())?;
        self.shares.encode(out)?;
        out.write_all(&self.report_id)
    }

    fn decode<R: Read>(input: &mut R) -> std::io::Result<Self> {
        Ok(RoutedEntry {
            slot: u32::from_le_bytes(read_array(input)?),
            shares: Spilled::decode(input)?,
            report_id: read_array::<REPORT_ID_LEN>(input)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::scan::losing_copies;
    use super::*;
    use crate::storage::spill::DiskSorter;
    use crate::wire::report_id::ReportId;

    fn copy(ping_id: &str, file: u32, record: u32) -> PingCopy {
        PingCopy {
            ping_id: ping_id.into(),
            order: Order { file, record },
        }
    }

    #[test]
    fn the_first_copy_by_input_order_wins_whatever_order_copies_arrive_in() {
        let dir = tempfile::tempdir().unwrap();
        // Runs of two records, so that copies of one id sit in different runs.
        let mut sorter = DiskSorter::new(dir.path(), 2).unwrap();
        for c in [
            copy("ping", 1, 0),
            copy("other", 1, 1),
            copy("ping", 0, 5),
            copy("ping", 2, 3),
            copy("third", 0, 0),
            copy("ping", 0, 7),
            copy("other", 0, 9),
        ] {
            sorter.push(c).unwrap();
        }
        let sorted = sorter.finish().unwrap();
        let mut losers: Vec<Order> = losing_copies(sorted).map(Result::unwrap).collect();
        losers.sort();
        let order = |file, record| Order { file, record };
        assert_eq!(
            losers,
            vec![order(0, 7), order(1, 0), order(1, 1), order(2, 3)]
        );
    }

    fn round_trip<T: Sortable>(record: &T) -> T {
        let mut bytes = Vec::new();
        record.encode(&mut bytes).unwrap();
        let mut input = bytes.as_slice();
        let back = T::decode(&mut input).unwrap();
        assert!(input.is_empty(), "decode reads exactly what encode wrote");
        back
    }

    #[test]
    fn records_spilled_to_disk_read_back_as_written() {
        let order = Order { file: 3, record: 9 };
        let shares = Spilled::decode(&mut &(1u8..=16).collect::<Vec<_>>()[..]).unwrap();
        let report_id: ReportId = std::array::from_fn(|i| i as u8 * 3);
        assert_eq!(round_trip(&order), order);
        let ping = copy("ping-\u{e9}", 1, 2);
        assert_eq!(round_trip(&ping), ping);
        let entry = round_trip(&ReadEntry {
            order,
            batch: 2,
            report_id,
            shares,
        });
        assert_eq!(
            (entry.order, entry.batch, entry.report_id, entry.shares),
            (order, 2, report_id, shares)
        );
        let routed = RoutedEntry {
            slot: 7,
            shares,
            report_id,
        };
        assert_eq!(round_trip(&routed), routed);
    }
}
