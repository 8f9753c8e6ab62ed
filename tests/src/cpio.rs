//! A minimal writer for the "newc" cpio format the Linux initramfs reads.
//! The harness appends one such archive (VMM binary, its libraries, the
//! scenario) to the prebuilt L1 base archive; the kernel unpacks both.

use std::io::{self, Write};

pub struct Cpio<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> Cpio<W> {
    pub fn new(out: W) -> Self {
        Cpio { out, ino: 1000, written: 0 }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.ino += 1;
        let namesize = name.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino, mode, 0, 0, 1, 0, data.len(), 0, 0, 0, 0, namesize, 0
        );
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    fn write(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4)) % 4;
        self.write(&[0u8; 3][..n as usize])
    }

    pub fn dir(&mut self, name: &str) -> io::Result<()> {
        self.entry(name, 0o040755, &[])
    }

    pub fn file(&mut self, name: &str, data: &[u8], executable: bool) -> io::Result<()> {
        self.entry(name, if executable { 0o100755 } else { 0o100644 }, data)
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, &[])?;
        // The kernel reads archives in 512-byte blocks when several follow
        // each other; pad like cpio(1) does.
        let n = (512 - (self.written % 512)) % 512;
        self.write(&vec![0u8; n as usize])?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout() {
        let mut c = Cpio::new(Vec::new());
        c.dir("bin").unwrap();
        c.file("bin/x", b"abc", true).unwrap();
        let v = c.finish().unwrap();
        assert_eq!(&v[..6], b"070701");
        assert_eq!(v.len() % 512, 0);
        let s = String::from_utf8_lossy(&v);
        assert!(s.contains("bin/x\0"));
        assert!(s.contains("TRAILER!!!"));
        // Data is 4-byte aligned after the header and name.
        let pos = s.find("abc").unwrap();
        assert_eq!(pos % 4, 0);
    }
}
