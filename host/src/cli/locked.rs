//! What to tell an operator whose command found the redb store locked: which
//! process holds it and, when it is a running `creditgate serve`, the `--server`
//! URL that asks that gateway instead.
//!
//! The holder is found the way `fuser` finds it, from `/proc/<pid>/fd` (Linux;
//! elsewhere, or without permission to look, the hint is the generic one). Its
//! HTTP address is read from its command line (`--http-listen`), or its config
//! file's `http_listen`, else serve's default.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

/// serve's default HTTP address.
const DEFAULT_HTTP: &str = "127.0.0.1:8080";

/// The error message for a store that another process holds.
pub fn hint(store: &Path) -> String {
    let name = store.display();
    match holder(store) {
        Some(Holder {
            pid,
            serve: true,
            http,
        }) => match http {
            Some(addr) => format!(
                "the store {name} is in use by a running `creditgate serve` (pid {pid}); pass \
                 --server http://{addr} (or set $CREDITGATE_SERVER) to ask it, with a command \
                 that takes --server; for one that does not (check, replay, store), stop it first"
            ),
            None => format!(
                "the store {name} is in use by a running `creditgate serve` (pid {pid}) whose \
                 HTTP API is off; give it an http_listen to ask it with --server, or stop it first"
            ),
        },
        Some(Holder { pid, .. }) => format!(
            "the store {name} is in use by another process (pid {pid}); try again when it \
             has finished"
        ),
        None => format!(
            "the store {name} is in use by another process; if it is a running `creditgate \
             serve`, pass --server http://{DEFAULT_HTTP} (its http_listen) to ask it"
        ),
    }
}

struct Holder {
    pid: u32,
    /// Whether its command line is `creditgate ... serve ...`.
    serve: bool,
    /// Its HTTP API's address, as a client reaches it; `None` when it is off.
    http: Option<String>,
}

fn holder(store: &Path) -> Option<Holder> {
    let target = std::fs::canonicalize(store).ok()?;
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || !holds(&entry.path(), &target) {
            continue;
        }
        let args = cmdline(pid);
        let serve = args
            .first()
            .is_some_and(|a| Path::new(a).file_name().is_some_and(|f| f == "creditgate"))
            && args.iter().any(|a| a == "serve");
        let http = if serve {
            http_address(pid, &args)
        } else {
            None
        };
        return Some(Holder { pid, serve, http });
    }
    None
}

/// Whether the process at `/proc/<pid>` has `target` open.
fn holds(proc_dir: &Path, target: &Path) -> bool {
    let Ok(fds) = std::fs::read_dir(proc_dir.join("fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|p| p == target))
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            bytes
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// serve's HTTP address from its arguments, else its config file, else the
/// default; `None` when it is `off`.
fn http_address(pid: u32, args: &[String]) -> Option<String> {
    let flag = |name: &str| {
        let prefix = format!("{name}=");
        args.iter().enumerate().find_map(|(i, a)| {
            if a == name {
                args.get(i + 1).cloned()
            } else {
                a.strip_prefix(&prefix).map(str::to_owned)
            }
        })
    };
    let from_config = || {
        let config = PathBuf::from(flag("--config")?);
        // A relative path is relative to serve's working directory.
        let config = Path::new(&format!("/proc/{pid}/cwd")).join(config);
        let table: toml::Table = std::fs::read_to_string(config).ok()?.parse().ok()?;
        table.get("http_listen")?.as_str().map(str::to_owned)
    };
    let addr = flag("--http-listen")
        .or_else(from_config)
        .unwrap_or_else(|| DEFAULT_HTTP.to_owned());
    if addr == "off" {
        return None;
    }
    // Port 0: the kernel chose; the port is the one its listening socket has.
    let addr = match addr.parse::<SocketAddrV4>() {
        Ok(a) if a.port() == 0 => {
            let postfix = flag("--postfix-listen").and_then(|p| p.parse::<SocketAddrV4>().ok());
            listening(pid)
                .into_iter()
                .find(|l| l.ip() == a.ip() && Some(*l) != postfix)
                .map_or(addr, |l| l.to_string())
        }
        _ => addr,
    };
    // A gateway listening on every address is reached on loopback from here.
    Some(
        addr.replace("0.0.0.0:", "127.0.0.1:")
            .replace("[::]:", "[::1]:"),
    )
}

/// The IPv4 TCP addresses process `pid` listens on, from `/proc/net/tcp`.
fn listening(pid: u32) -> Vec<SocketAddrV4> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let sockets: Vec<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            link.strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is field 1, st field 3 (0A: LISTEN), inode field 9.
            if fields.get(3) != Some(&"0A")
                || !sockets.iter().any(|s| Some(&s.as_str()) == fields.get(9))
            {
                return None;
            }
            let (ip, port) = fields.get(1)?.split_once(':')?;
            let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.to_le_bytes());
            Some(SocketAddrV4::new(ip, u16::from_str_radix(port, 16).ok()?))
        })
        .collect()
}
