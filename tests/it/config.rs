use celeriac::config;
use std::path::Path;
#[test]
fn smoke() {
    match config::load(Path::new("tests/fixtures/config/errors/everything.yaml")) {
        Ok(c) => println!("{}", c.summary()),
        Err(e) => println!("{e}"),
    }
}
