use super::*;
use crate::storage::dump::{gzip, write_parquet, DecodedRow};

#[test]
fn lines_are_read_one_at_a_time_and_an_endless_one_is_skipped_whole() {
    let long = vec![b'a'; MAX_LINE_BYTES + 1];
    let text = [b"one\n".as_slice(), &long, b"\ntwo\r\n\nthree"].concat();
    // A reader that hands out 7 bytes at a time: lines cross its buffers.
    let reader = std::io::BufReader::with_capacity(7, text.as_slice());
    let mut lines = Vec::new();
    for_each_line(reader, |line| lines.push(line.map(<[u8]>::to_vec))).unwrap();
    assert_eq!(
        lines,
        [
            Ok(b"one".to_vec()),
            Err(PingRejection::TooLarge),
            Ok(b"two\r".to_vec()),
            Ok(Vec::new()),
            Ok(b"three".to_vec()),
        ]
    );
}

/// A reader that hands out one byte per call, the worst a store can do.
struct Trickle<'a>(&'a [u8]);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.len().min(buf.len()).min(1);
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

#[test]
fn ndjson_read_as_a_stream_gives_the_records_of_the_whole_file() {
    use crate::wire::ping::SinkMessage;
    let line = |n: u8| {
        let message = SinkMessage::wrap(&[b'{', b'0' + n, b'}'], "id", "2019-06-26T01:00:00Z");
        serde_json::to_vec(&message).unwrap()
    };
    let text = [line(1), b"\nnot json\n\n".to_vec(), line(2)].concat();
    let records = |format: InputFormat, bytes: InputBytes| {
        let mut out = Vec::new();
        read_records("f", format, bytes, |r| out.push(r)).unwrap();
        out
    };
    let whole = records(InputFormat::Ndjson, InputBytes::Whole(&mut text.clone()));
    assert_eq!(whole.len(), 3);
    assert_eq!(whole[0].as_ref().unwrap().submission_date, "2019-06-26");
    assert_eq!(whole[0].as_ref().unwrap().body, b"{1}");
    assert!(whole[1].is_err());
    assert_eq!(whole[2].as_ref().unwrap().body, b"{2}");
    for file in [text.clone(), gzip(&text)] {
        let streamed = records(InputFormat::Ndjson, InputBytes::Stream(&mut Trickle(&file)));
        assert_eq!(streamed, whole);
    }
}

#[test]
fn a_file_read_in_ranges_refuses_ranges_past_its_end_before_reading() {
    use parquet::file::reader::ChunkReader;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"0123456789").unwrap();
    let location = crate::storage::location::Location::parse(dir.path().to_str().unwrap());
    let local = location.unwrap().ranges("f", 10);
    assert_eq!(&local.get_bytes(2, 3).unwrap()[..], b"234");
    // A footer may claim any length: it is refused, not allocated.
    assert!(local.get_bytes(5, usize::MAX).is_err());
    assert!(local.get_bytes(8, 3).is_err());
    assert!(local.get_read(11).is_err());
    // A range read ends at the range's end, and keeps answering 0 there.
    let mut range = local.read(2..5).unwrap();
    let mut read = Vec::new();
    range.read_to_end(&mut read).unwrap();
    assert_eq!(read, b"234");
    assert_eq!(range.read(&mut [0; 4]).unwrap(), 0);
}

#[test]
fn a_parquet_file_that_decodes_on_past_its_end_is_unreadable_at_once() {
    // Found by the fuzzer: a 1.6 KB file whose metadata declares about
    // 1.3 million fields that Parquet skips one read at a time.
    let found = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fuzz/regressions/input_file/timeout-8ab948efa38d23c9f5918c99c5aa26e2a3dc44c9"
    ))
    .unwrap();
    let file = Bytes::copy_from_slice(&found[1..]);
    let memory = crate::storage::location::Location::parse("memory://").unwrap();
    memory.put("found.parquet", file.clone()).unwrap();
    let ranges = memory.ranges("found.parquet", file.len() as u64);
    let error = read_records(
        "found.parquet",
        InputFormat::Parquet,
        InputBytes::Ranges(ranges),
        |_| {},
    )
    .expect_err("the file is unreadable");
    assert!(error.to_string().contains("past its end"), "{error}");
}

#[test]
fn a_record_that_decompresses_past_the_limit_is_too_large() {
    let bomb = gzip(&vec![b' '; MAX_RECORD_BYTES as usize + 1]);
    assert!(bomb.len() < 100_000);
    assert_eq!(table_payload(&bomb), Err(PingRejection::TooLarge));
    assert_eq!(table_payload(&gzip(b"{}")), Ok(b"{}".to_vec()));
}

#[test]
fn submission_dates_are_utc_dates_of_the_timestamp() {
    for (timestamp, date) in [
        ("2019-06-26T12:45:08.000000Z", "2019-06-26"),
        ("2019-06-25T23:59:59-01:00", "2019-06-26"),
        ("2019-06-26T23:30-01:00", "2019-06-27"),
        ("2019-06-26T00:30:00+02:00", "2019-06-25"),
        ("2019-06-26T10:00:00.5", "2019-06-26"),
    ] {
        assert_eq!(utc_date(timestamp).as_deref(), Ok(date), "{timestamp}");
    }
    for garbage in ["garbage", "2019-06-26", "2019-06-26Tnoon", ""] {
        assert_eq!(
            utc_date(garbage),
            Err(PingRejection::BadTimestamp),
            "{garbage}"
        );
    }
}

#[test]
fn parquet_is_read_from_the_callers_buffer_which_comes_back_uncopied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("part.parquet");
    let row = |id: &str, payload: Vec<u8>| DecodedRow {
        document_id: id.into(),
        submission_timestamp: 1_561_507_200_000_000, // 2019-06-26T00:00:00Z
        payload,
    };
    let rows = [
        row("raw", br#"{"id":"raw"}"#.to_vec()),
        row("gzip", gzip(br#"{"id":"gzip"}"#)),
    ];
    write_parquet(&path, &rows).unwrap();
    let file = std::fs::read(&path).unwrap();
    let mut data = file.clone();
    let buffer = data.as_ptr();
    let mut read = Vec::new();
    read_records(
        "part.parquet",
        InputFormat::Parquet,
        InputBytes::Whole(&mut data),
        |r| read.push(r.unwrap()),
    )
    .unwrap();
    let bodies: Vec<&[u8]> = read.iter().map(|r| r.body.as_slice()).collect();
    assert_eq!(bodies, [&br#"{"id":"raw"}"#[..], br#"{"id":"gzip"}"#]);
    assert!(read.iter().all(|r| r.submission_date == "2019-06-26"));
    assert_eq!(data, file, "the caller's buffer is given back");
    assert_eq!(data.as_ptr(), buffer, "without a copy");

    // In ranges, from local disk and from a store, the same records.
    let memory = crate::storage::location::Location::parse("memory://").unwrap();
    memory
        .put("part.parquet", Bytes::from(file.clone()))
        .unwrap();
    let local = crate::storage::location::Location::parse(dir.path().to_str().unwrap());
    for ranges in [
        local.unwrap().ranges("part.parquet", file.len() as u64),
        memory.ranges("part.parquet", file.len() as u64),
    ] {
        let mut again = Vec::new();
        read_records(
            "part.parquet",
            InputFormat::Parquet,
            InputBytes::Ranges(ranges),
            |r| again.push(r.unwrap()),
        )
        .unwrap();
        assert_eq!(again, read);
    }
}
