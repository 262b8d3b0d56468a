//! More than one process, on torch's own c10d (the process groups PyTorch DDP runs on): the launch
//! as torchrun or Slurm describe it in the environment (`Launch`), and a Gloo process group over a
//! TCP store with the collectives host needs (`Group`: sum all-reduce, broadcast, barrier), through
//! the C ABI of `csrc/c10d_shim.cpp`. Every collective has a timeout, so a dead peer is an error,
//! never a hang.
use anyhow::{bail, Context, Result};
use std::time::Duration;
use tch::Tensor;

/// How this process was launched, from the environment: torchrun's `RANK`, `WORLD_SIZE`,
/// `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT` (and `TORCHELASTIC_USE_AGENT_STORE`: torchrun's agent
/// hosts the store, every rank connects to it), else Slurm's `SLURM_PROCID`, `SLURM_NTASKS`,
/// `SLURM_LOCALID` with `MASTER_ADDR`/`MASTER_PORT`.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// The store is hosted elsewhere (torchrun's agent): rank 0 connects as a client too.
    pub agent_store: bool,
}

impl Launch {
    /// The launch the environment describes: None for a plain single process (no `WORLD_SIZE`
    /// and no `SLURM_NTASKS`, a Slurm job of one task, or `WORLD_SIZE=1` without a
    /// `MASTER_PORT`). torchrun with one process (`WORLD_SIZE=1` and its `MASTER_PORT`) is a
    /// group of one, as in PyTorch: every collective runs, on NCCL for CUDA tensors too.
    pub fn from_env() -> Result<Option<Launch>> {
        Self::from_vars(&|k| std::env::var(k).ok())
    }

    /// As `from_env`, reading variables through `var`.
    pub fn from_vars(var: &dyn Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let num = |k: &str| -> Result<Option<usize>> {
            var(k).map(|v| v.trim().parse::<usize>().with_context(|| format!("environment variable {k}={v:?} is not a non-negative integer"))).transpose()
        };
        let (rank, world, local) = match (num("WORLD_SIZE")?, num("SLURM_NTASKS")?) {
            (Some(0), _) => bail!("WORLD_SIZE=0: a launch needs at least one process"),
            (Some(1), _) if var("MASTER_PORT").is_none() => return Ok(None),
            (Some(w), _) => (num("RANK")?.context("WORLD_SIZE is set but RANK is not")?, w, num("LOCAL_RANK")?.unwrap_or(0)),
            (None, Some(w)) if w > 1 => (num("SLURM_PROCID")?.context("SLURM_NTASKS is set but SLURM_PROCID is not")?, w, num("SLURM_LOCALID")?.unwrap_or(0)),
            (None, _) => return Ok(None),
        };
        if rank >= world {
            bail!("rank {rank} is not below the world size {world}");
        }
        let master_addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = var("MASTER_PORT").context("a distributed launch needs MASTER_PORT (torchrun sets it; with Slurm, export it)")?;
        let master_port = port.trim().parse::<u16>().with_context(|| format!("MASTER_PORT={port:?} is not a port number"))?;
        let agent_store = var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        Ok(Some(Launch { rank, world, local_rank: local, master_addr, master_port, agent_store }))
    }
}

/// The contiguous block of `n` items rank `rank` of `world` takes (sizes differ by one at most).
pub fn share(n: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    n * rank / world..n * (rank + 1) / world
}

/// Work on `n` items dealt out over the ranks: `f` computes the rows of a range of items (a
/// tensor whose dimension 0 is the range's length), each rank its `share`, and every rank gets
/// all `n` rows in item order. Without a group, or with fewer items than ranks, `f(0..n)`.
pub fn sharded(group: Option<&Group>, n: usize, f: impl FnOnce(std::ops::Range<usize>) -> Result<Tensor>) -> Result<Tensor> {
    match group {
        Some(g) if n >= g.world => g.all_gather(&f(share(n, g.rank, g.world))?),
        _ => f(0..n),
    }
}

/// Whether `flag` holds on every rank (`flag` itself without a group). Ranks that must take the
/// same branch, each deciding from what it sees (a cache entry another rank may be writing at
/// that moment), agree this way so that they go on to the same collectives.
pub fn all(group: Option<&Group>, flag: bool) -> Result<bool> {
    let Some(g) = group else { return Ok(flag) };
    let mut misses = Tensor::from_slice(&[i64::from(!flag)]);
    g.all_reduce_sum(&mut misses)?;
    Ok(misses.int64_value(&[0]) == 0)
}

/// Whether this build has the c10d shim (it is compiled against the wheel's headers by build.rs).
pub fn available() -> bool {
    cfg!(dualign_c10d)
}

/// Whether the shim was built with NCCL (the CUDA and NCCL headers were there at build time).
pub fn nccl_available() -> bool {
    cfg!(dualign_nccl)
}

/// The backends this build has, as `host --version` names them.
pub fn backends() -> Vec<&'static str> {
    [(available(), "gloo"), (nccl_available(), "nccl")].into_iter().filter(|b| b.0).map(|b| b.1).collect()
}

#[cfg(dualign_c10d)]
mod ffi {
    use std::ffi::{c_char, c_int, c_long, c_void};
    extern "C" {
        pub fn dualign_c10d_new(host: *const c_char, port: c_int, rank: c_int, world: c_int, is_server: c_int, nccl: c_int, timeout_ms: c_long, out: *mut *mut c_void, err: *mut *mut c_char) -> c_int;
        pub fn dualign_c10d_free(group: *mut c_void);
        pub fn dualign_c10d_free_error(err: *mut c_char);
        pub fn dualign_c10d_all_reduce_sum(group: *mut c_void, t: *mut c_void, err: *mut *mut c_char) -> c_int;
        pub fn dualign_c10d_broadcast(group: *mut c_void, t: *mut c_void, root: c_int, err: *mut *mut c_char) -> c_int;
        pub fn dualign_c10d_barrier(group: *mut c_void, err: *mut *mut c_char) -> c_int;
    }
}

/// Without the shim: the same functions, each failing (`Group::connect` says why first, so no
/// group exists for the others to be called on).
#[cfg(not(dualign_c10d))]
#[allow(clippy::missing_safety_doc)]
mod ffi {
    use std::ffi::{c_char, c_int, c_long, c_void};
    pub unsafe fn dualign_c10d_new(_: *const c_char, _: c_int, _: c_int, _: c_int, _: c_int, _: c_int, _: c_long, _: *mut *mut c_void, _: *mut *mut c_char) -> c_int {
        -1
    }
    pub unsafe fn dualign_c10d_free(_: *mut c_void) {}
    pub unsafe fn dualign_c10d_free_error(_: *mut c_char) {}
    pub unsafe fn dualign_c10d_all_reduce_sum(_: *mut c_void, _: *mut c_void, _: *mut *mut c_char) -> c_int {
        -1
    }
    pub unsafe fn dualign_c10d_broadcast(_: *mut c_void, _: *mut c_void, _: c_int, _: *mut *mut c_char) -> c_int {
        -1
    }
    pub unsafe fn dualign_c10d_barrier(_: *mut c_void, _: *mut *mut c_char) -> c_int {
        -1
    }
}

/// A process group of `world` ranks: Gloo for CPU tensors, and NCCL for CUDA tensors when it was
/// asked for at `connect` (else CUDA tensors go over Gloo too).
pub struct Group {
    ptr: *mut std::ffi::c_void,
    pub rank: usize,
    pub world: usize,
}

/// Turns a shim return code and its message into a Result.
fn check(what: &str, rc: std::ffi::c_int, err: *mut std::ffi::c_char) -> Result<()> {
    if rc == 0 {
        return Ok(());
    }
    let message = if err.is_null() {
        "unknown error".to_string()
    } else {
        // SAFETY: the shim wrote a NUL-terminated strdup'ed message; it is freed right after.
        let m = unsafe { std::ffi::CStr::from_ptr(err) }.to_string_lossy().into_owned();
        unsafe { ffi::dualign_c10d_free_error(err) };
        m
    };
    bail!("{what}: {}", crate::util::first_line(&message))
}

impl Group {
    /// Joins the group `launch` describes; rank 0 hosts the store unless torchrun's agent does.
    /// `timeout` bounds the rendezvous and every later collective. With `nccl`, CUDA tensors go
    /// over NCCL (each rank's CUDA device must be its own: `cuda:LOCAL_RANK`).
    pub fn connect(launch: &Launch, timeout: Duration, nccl: bool) -> Result<Group> {
        let what = format!("rank {} of {}: joining the process group at {}:{}", launch.rank, launch.world, launch.master_addr, launch.master_port);
        if !available() {
            bail!("{what}: this build of host has no distributed support (the c10d shim did not compile; see the build's warnings)");
        }
        let host = std::ffi::CString::new(launch.master_addr.clone()).context("MASTER_ADDR holds a NUL byte")?;
        let server = launch.rank == 0 && !launch.agent_store;
        let mut ptr = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        // SAFETY: plain values and out-pointers; the shim catches every C++ exception.
        let rc = unsafe { ffi::dualign_c10d_new(host.as_ptr(), launch.master_port as _, launch.rank as _, launch.world as _, server as _, nccl as _, timeout.as_millis() as _, &mut ptr, &mut err) };
        check(&what, rc, err)?;
        Ok(Group { ptr, rank: launch.rank, world: launch.world })
    }

    /// Sums `t` over the ranks, in place (every rank ends with the same sum).
    pub fn all_reduce_sum(&self, t: &mut Tensor) -> Result<()> {
        let mut err = std::ptr::null_mut();
        // SAFETY: `t` is a live tensor; c10d works on it in place and waits before returning.
        let rc = unsafe { ffi::dualign_c10d_all_reduce_sum(self.ptr, t.as_mut_ptr() as *mut std::ffi::c_void, &mut err) };
        check(&format!("rank {}: all-reduce", self.rank), rc, err)
    }

    /// Copies rank `root`'s `t` into `t` on every rank.
    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()> {
        let mut err = std::ptr::null_mut();
        // SAFETY: as in all_reduce_sum.
        let rc = unsafe { ffi::dualign_c10d_broadcast(self.ptr, t.as_mut_ptr() as *mut std::ffi::c_void, root as _, &mut err) };
        check(&format!("rank {}: broadcast from rank {root}", self.rank), rc, err)
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> Result<()> {
        let mut err = std::ptr::null_mut();
        // SAFETY: the group is live.
        let rc = unsafe { ffi::dualign_c10d_barrier(self.ptr, &mut err) };
        check(&format!("rank {}: barrier", self.rank), rc, err)
    }
    /// Every rank's `t` concatenated along dimension 0 in rank order, on every rank. The sizes
    /// along dimension 0 may differ between ranks (the other dimensions and the kind may not).
    /// Built on the sum all-reduce: each rank's rows go into its own block of a zero buffer, so
    /// the sum is the concatenation exactly (adding zeros changes no value, integers included).
    pub fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        let size = t.size();
        let rows = *size.first().context("all_gather needs a tensor with at least one dimension")?;
        let mut counts = Tensor::zeros([self.world as i64], (tch::Kind::Int64, tch::Device::Cpu));
        let _ = counts.f_narrow(0, self.rank as i64, 1)?.f_fill_(rows)?;
        self.all_reduce_sum(&mut counts)?;
        let counts = Vec::<i64>::try_from(&counts)?;
        let most = counts.iter().copied().max().unwrap_or(0);
        let mut shape = vec![self.world as i64, most];
        shape.extend_from_slice(&size[1..]);
        let mut buffer = Tensor::f_zeros(shape.as_slice(), (t.kind(), t.device()))?;
        if rows > 0 {
            buffer.f_select(0, self.rank as i64)?.f_narrow(0, 0, rows)?.f_copy_(t)?;
        }
        self.all_reduce_sum(&mut buffer)?;
        let parts: Vec<Tensor> = counts.iter().enumerate().map(|(r, &n)| buffer.f_select(0, r as i64)?.f_narrow(0, 0, n)).collect::<std::result::Result<_, _>>()?;
        Ok(Tensor::f_cat(&parts, 0)?)
    }

    /// Rank 0's `bytes` on every rank (the others' are ignored).
    pub fn broadcast_bytes(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        let mut len = Tensor::from_slice(&[bytes.len() as i64]);
        self.broadcast(&mut len, 0)?;
        let n = len.int64_value(&[0]) as usize;
        let mut data = if self.rank == 0 { Tensor::from_slice(bytes) } else { Tensor::zeros([n as i64], (tch::Kind::Uint8, tch::Device::Cpu)) };
        if n > 0 {
            self.broadcast(&mut data, 0)?;
        }
        Ok(Vec::<u8>::try_from(&data)?)
    }

    /// Makes every rank's `params` rank 0's, tensor by tensor in name order (the same order on
    /// every rank whatever order the caller listed them in; a size mismatch is Gloo's error).
    pub fn broadcast_parameters(&self, params: &[(String, Tensor)]) -> Result<()> {
        let mut sorted: Vec<&(String, Tensor)> = params.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        tch::no_grad(|| -> Result<()> {
            for (name, t) in sorted {
                let mut t = t.shallow_clone();
                self.broadcast(&mut t, 0).with_context(|| format!("parameter {name}"))?;
            }
            Ok(())
        })
    }
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Group {{ rank: {}, world: {} }}", self.rank, self.world)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: created by dualign_c10d_new, dropped once.
        unsafe { ffi::dualign_c10d_free(self.ptr) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launches_are_read_from_torchrun_and_slurm_variables() {
        fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
            move |k: &str| pairs.iter().find(|p| p.0 == k).map(|p| p.1.to_string())
        }
        assert_eq!(Launch::from_vars(&vars(&[])).unwrap(), None, "a plain process");
        assert_eq!(Launch::from_vars(&vars(&[("WORLD_SIZE", "1"), ("RANK", "0")])).unwrap(), None, "WORLD_SIZE=1 left in a shell");
        assert_eq!(Launch::from_vars(&vars(&[("SLURM_NTASKS", "1"), ("SLURM_PROCID", "0"), ("MASTER_PORT", "1")])).unwrap(), None, "a one-task Slurm job");
        let one = Launch::from_vars(&vars(&[("WORLD_SIZE", "1"), ("RANK", "0"), ("MASTER_PORT", "29500")])).unwrap().expect("torchrun with one process");
        assert_eq!((one.rank, one.world, one.master_port), (0, 1, 29500));
        let torchrun = [("WORLD_SIZE", "4"), ("RANK", "3"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "node0"), ("MASTER_PORT", "29500"), ("TORCHELASTIC_USE_AGENT_STORE", "True")];
        let l = Launch::from_vars(&vars(&torchrun)).unwrap().unwrap();
        assert_eq!(l, Launch { rank: 3, world: 4, local_rank: 1, master_addr: "node0".into(), master_port: 29500, agent_store: true });
        let slurm = [("SLURM_NTASKS", "2"), ("SLURM_PROCID", "1"), ("SLURM_LOCALID", "0"), ("MASTER_PORT", "1234")];
        let l = Launch::from_vars(&vars(&slurm)).unwrap().unwrap();
        assert_eq!((l.rank, l.world, l.master_addr.as_str(), l.agent_store), (1, 2, "127.0.0.1", false));
        let e = Launch::from_vars(&vars(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_PORT", "1")])).unwrap_err().to_string();
        assert_eq!(e, "rank 2 is not below the world size 2");
        let e = Launch::from_vars(&vars(&[("WORLD_SIZE", "2"), ("RANK", "0")])).unwrap_err().to_string();
        assert!(e.starts_with("a distributed launch needs MASTER_PORT"), "{e}");
        let e = Launch::from_vars(&vars(&[("WORLD_SIZE", "two")])).unwrap_err().to_string();
        assert_eq!(e, "environment variable WORLD_SIZE=\"two\" is not a non-negative integer");
    }
}
