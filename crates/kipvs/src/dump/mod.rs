//! What `kipvs dump` and `kipvs plan` print: the IPVS table in `ipvsadm`'s layouts, byte
//! for byte, and as a JSON document for machines.
//!
//! Everything here is a pure function from values ([`kipvs_ipvs::Table`],
//! [`kipvs_ipvs::Info`], the text of `/proc/net/ip_vs_conn`) to text; the commands read
//! the kernel and print. The oracle is `ipvsadm` 1.31 itself (`ipvsadm.c`, `libipvs`):
//! its sort order (see [`order`]), its column widths, its number scaling.
//!
//! - [`list`]: `ipvsadm -Ln`, `--stats`, `--rate`, `--exact`;
//! - [`save`]: `ipvsadm -Sn`;
//! - [`conn`]: `ipvsadm -Lnc`;
//! - [`json`]: the `--json` document;
//! - [`diff`]: a Plan's IPVS operations, one readable line each (`kipvs plan --diff`).

pub mod conn;
pub mod diff;
pub mod json;
pub mod list;
pub mod names;
pub mod order;
pub mod save;

#[cfg(test)]
mod testdata;

pub use list::{list, list_annotated, Columns, ListOptions};
