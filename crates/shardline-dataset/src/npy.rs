//! Reading the uint8 `.npy` tensors the processor writes (NumPy format 1.0 and 2.0).

/// Parses a `.npy` file holding uint8 values: returns the shape and the data.
pub fn parse_u8(bytes: &[u8]) -> Result<(Vec<usize>, &[u8]), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated .npy header")?;
    if !header.contains("'descr': '|u1'") && !header.contains("'descr': '<u1'") {
        return Err(format!("not a uint8 array: {header}"));
    }
    if header.contains("'fortran_order': True") {
        return Err("Fortran-ordered arrays are not supported".into());
    }
    let shape_text = header
        .split("'shape':")
        .nth(1)
        .and_then(|rest| rest.split('(').nth(1))
        .and_then(|rest| rest.split(')').next())
        .ok_or("no shape in the .npy header")?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad dimension {s:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let data = &bytes[start + header_len..];
    let expected: usize = shape.iter().product();
    if data.len() != expected {
        return Err(format!("{} values for shape {shape:?}", data.len()));
    }
    Ok((shape, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_processor_writes() {
        let tensor: Vec<u8> = (0..24).collect();
        let bytes = shardline_contract::shards::npy(&tensor, &[2, 4, 3]);
        let (shape, data) = parse_u8(&bytes).expect("parse");
        assert_eq!(shape, vec![2, 4, 3]);
        assert_eq!(data, &tensor[..]);
    }

    #[test]
    fn rejects_other_arrays() {
        assert!(parse_u8(b"hello world").is_err());
        let mut bytes = shardline_contract::shards::npy(&[1, 2, 3], &[3]);
        bytes.pop();
        assert!(
            parse_u8(&bytes)
                .expect_err("short")
                .contains("values for shape")
        );
    }
}
