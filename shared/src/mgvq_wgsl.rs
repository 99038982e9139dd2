//! The MGVQ encoder and grouped quantiser on WebGPU through the hand-written WGSL kernels of
//! `shaders/mgvq.wgsl`, for one image: the page's alternative to burn-wgpu, its default on
//! WebGPU (see docs/browser.md#the-wgsl-kernels; figures in docs/performance.md#browser). It
//! reads the same checkpoint keys and walks the same config as [`crate::mgvq::Mgvq`], which
//! stays the reference; the kernels are written by hand, as the alternative to burn-wgpu's
//! generated ones that the page offers beside them.
//!
//! [`WgslMgvq::load`] uploads the weights and records the whole forward pass once (a buffer per
//! activation, a uniform and a bind group per dispatch); [`WgslMgvq::encode`] writes the pixels,
//! replays the dispatches in one compute pass and reads the codes (and, if asked, the latent)
//! back asynchronously, as WebGPU requires. Behind the `wgsl` feature: the `wgpu` crate on the
//! browser's WebGPU in wasm, on Vulkan/Metal/DX12 natively.

pub use wgpu;
use wgpu::util::DeviceExt;

use crate::config::{BlockType, MgvqConfig as Config};
use crate::loader::TensorSource;
use crate::Error;

type Result<T> = std::result::Result<T, Error>;

/// The kernels' source.
pub const SHADER: &str = include_str!("../../shaders/mgvq.wgsl");

/// Invocations per workgroup (`WG` in the shader) and workgroups per dispatch dimension.
const WG: u32 = 64;
const MAX_GROUPS: u32 = 65_535;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Conv,
    Conv3t,
    Conv1t,
    RmsNorm,
    Unshuffle,
    AvgAdd,
    Glu,
    MlaVk,
    MlaOut,
    Quantize,
}

impl Kernel {
    const ALL: [Kernel; 10] = [
        Kernel::Conv,
        Kernel::Conv3t,
        Kernel::Conv1t,
        Kernel::RmsNorm,
        Kernel::Unshuffle,
        Kernel::AvgAdd,
        Kernel::Glu,
        Kernel::MlaVk,
        Kernel::MlaOut,
        Kernel::Quantize,
    ];

    fn entry(self) -> &'static str {
        match self {
            Kernel::Conv => "conv",
            Kernel::Conv3t => "conv3t",
            Kernel::Conv1t => "conv1t",
            Kernel::RmsNorm => "rms_norm",
            Kernel::Unshuffle => "unshuffle",
            Kernel::AvgAdd => "avg_add",
            Kernel::Glu => "glu",
            Kernel::MlaVk => "mla_vk",
            Kernel::MlaOut => "mla_out",
            Kernel::Quantize => "quantize",
        }
    }
}

/// Workgroups for `n` invocations: `[x, y]` with `x ≤ 65,535` (the shader's `index()`).
fn workgroups(n: usize) -> [u32; 2] {
    let groups = (n as u32).div_ceil(WG).max(1);
    if groups <= MAX_GROUPS {
        [groups, 1]
    } else {
        [MAX_GROUPS, groups.div_ceil(MAX_GROUPS)]
    }
}

/// One recorded dispatch.
struct Dispatch {
    kernel: Kernel,
    bind: wgpu::BindGroup,
    groups: [u32; 2],
}

/// An activation on the device: `[c, h, w]` f32.
#[derive(Clone)]
struct Act {
    buf: wgpu::Buffer,
    c: usize,
    h: usize,
    w: usize,
}

impl Act {
    fn len(&self) -> usize {
        self.c * self.h * self.w
    }
}

/// The kernels' uniform: eight sizes and `eps` (see the shader's `Params`).
fn params(n: [usize; 8], eps: f32) -> [u8; 48] {
    let mut out = [0u8; 48];
    for (i, v) in n.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&(*v as u32).to_le_bytes());
    }
    out[32..36].copy_from_slice(&eps.to_le_bytes());
    out
}

fn bytes_of(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Records the forward pass: reads weights from `src` under `prefix`, uploads them, and
/// appends one [`Dispatch`] per operation.
struct Recorder<'a> {
    device: &'a wgpu::Device,
    layout: &'a wgpu::BindGroupLayout,
    src: &'a dyn TensorSource,
    prefix: String,
    /// The placeholder bound where a kernel reads fewer than three inputs.
    unused: wgpu::Buffer,
    steps: Vec<Dispatch>,
    eps: f32,
}

impl Recorder<'_> {
    fn weight(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        Ok(self.src.read_shaped(&format!("{}{name}", self.prefix), shape)?.data)
    }

    /// A read-only storage buffer holding `data`.
    fn upload(&self, data: &[f32]) -> wgpu::Buffer {
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: &bytes_of(data),
            usage: wgpu::BufferUsages::STORAGE,
        })
    }

    fn output(&self, c: usize, h: usize, w: usize) -> Act {
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: (c * h * w * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        Act { buf, c, h, w }
    }

    fn dispatch(
        &mut self, kernel: Kernel, n: [usize; 8], inputs: [Option<&wgpu::Buffer>; 3], out: &wgpu::Buffer,
        invocations: usize,
    ) {
        let uniform = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: &params(n, self.eps),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let input = |i: usize| inputs[i].unwrap_or(&self.unused).as_entire_binding();
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: self.layout,
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: input(0) },
                wgpu::BindGroupEntry { binding: 2, resource: input(1) },
                wgpu::BindGroupEntry { binding: 3, resource: input(2) },
                wgpu::BindGroupEntry { binding: 4, resource: out.as_entire_binding() },
            ],
        });
        self.steps.push(Dispatch { kernel, bind, groups: workgroups(invocations) });
    }

    /// `name` (`{name}.weight`, `{name}.bias`): a `k×k` convolution to `c_out` channels,
    /// "same" padding, `groups` groups, then SiLU if `silu`.
    #[allow(clippy::too_many_arguments)] // mirrors nn.Conv2d's own argument list
    fn conv(
        &mut self, x: &Act, name: &str, c_out: usize, k: usize, groups: usize, bias: bool, silu: bool,
    ) -> Result<Act> {
        let w = self.weight(&format!("{name}.weight"), &[c_out, x.c / groups, k, k])?;
        // The tiled kernels (4 output channels × 4 pixels per invocation) where the channels
        // divide evenly (every convolution but the depthwise one), with the weight regrouped
        // `[out/4, in/groups, k, k, 4]`.
        let four = (c_out / groups).is_multiple_of(4) && (k == 1 || k == 3);
        let w = if four {
            let per = x.c / groups * k * k;
            let mut g = vec![0f32; w.len()];
            for (o, row) in w.chunks(per).enumerate() {
                for (t, v) in row.iter().enumerate() {
                    g[((o / 4) * per + t) * 4 + o % 4] = *v;
                }
            }
            g
        } else {
            w
        };
        let w = self.upload(&w);
        let b = if bias { Some(self.upload(&self.weight(&format!("{name}.bias"), &[c_out])?)) } else { None };
        let y = self.output(c_out, x.h, x.w);
        let n = [x.c, c_out, x.h, x.w, k, groups, bias as usize, silu as usize];
        let tiles = x.h * x.w.div_ceil(4) * c_out / 4;
        let (kernel, invocations) = match (four, k) {
            (true, 3) => (Kernel::Conv3t, tiles),
            (true, _) => (Kernel::Conv1t, tiles),
            (false, _) => (Kernel::Conv, y.len()),
        };
        self.dispatch(kernel, n, [Some(&x.buf), Some(&w), b.as_ref()], &y.buf, invocations);
        Ok(y)
    }

    /// `name.weight`, `name.bias`: the per-pixel RMS norm of `x`, plus `residual`.
    fn rms_norm(&mut self, x: &Act, name: &str, residual: Option<&Act>) -> Result<Act> {
        let mut wb = self.weight(&format!("{name}.weight"), &[x.c])?;
        wb.extend(self.weight(&format!("{name}.bias"), &[x.c])?);
        let wb = self.upload(&wb);
        let y = self.output(x.c, x.h, x.w);
        let n = [x.c, x.h * x.w, residual.is_some() as usize, 0, 0, 0, 0, 0];
        self.dispatch(
            Kernel::RmsNorm,
            n,
            [Some(&x.buf), Some(&wb), residual.map(|r| &r.buf)],
            &y.buf,
            x.h * x.w,
        );
        Ok(y)
    }

    /// `pixel_unshuffle(x)`, plus `channel_average(pixel_unshuffle(shortcut), 4 · x.c)`.
    fn unshuffle(&mut self, x: &Act, shortcut: Option<&Act>) -> Act {
        let y = self.output(x.c * 4, x.h / 2, x.w / 2);
        let n = [x.c, y.c, x.h, x.w, shortcut.map_or(0, |s| s.c), 0, 0, 0];
        self.dispatch(Kernel::Unshuffle, n, [Some(&x.buf), shortcut.map(|s| &s.buf), None], &y.buf, y.len());
        y
    }

    fn res_block(&mut self, x: &Act, p: &str) -> Result<Act> {
        let h = self.conv(x, &format!("{p}.main.conv1.conv"), x.c, 3, 1, true, true)?;
        let h = self.conv(&h, &format!("{p}.main.conv2.conv"), x.c, 3, 1, false, false)?;
        self.rms_norm(&h, &format!("{p}.main.conv2.norm"), Some(x))
    }

    fn evit_glu(&mut self, x: &Act, p: &str, cfg: &Config) -> Result<Act> {
        let (c, d, hw) = (x.c, cfg.attention_dim, x.h * x.w);
        let heads = c / d;
        // LiteMLA.
        let ctx = format!("{p}.context_module.main");
        let qkv = self.conv(x, &format!("{ctx}.qkv.conv"), 3 * c, 1, 1, false, false)?;
        let vk = self.output(heads, d + 1, d);
        self.dispatch(
            Kernel::MlaVk,
            [heads, d, hw, 0, 0, 0, 0, 0],
            [Some(&qkv.buf), None, None],
            &vk.buf,
            vk.len(),
        );
        let att = self.output(c, x.h, x.w);
        let n = [heads, d, hw, 0, 0, 0, 0, 0];
        self.dispatch(Kernel::MlaOut, n, [Some(&qkv.buf), Some(&vk.buf), None], &att.buf, att.len());
        let proj = self.conv(&att, &format!("{ctx}.proj.conv"), c, 1, 1, false, false)?;
        let x = self.rms_norm(&proj, &format!("{ctx}.proj.norm"), Some(x))?;
        // GLUMBConv.
        let local = format!("{p}.local_module.main");
        let mid = c * cfg.expand_ratio;
        let h = self.conv(&x, &format!("{local}.inverted_conv.conv"), 2 * mid, 1, 1, true, true)?;
        let h = self.conv(&h, &format!("{local}.depth_conv.conv"), 2 * mid, 3, 2 * mid, true, false)?;
        let gated = self.output(mid, x.h, x.w);
        self.dispatch(
            Kernel::Glu,
            [mid, hw, 0, 0, 0, 0, 0, 0],
            [Some(&h.buf), None, None],
            &gated.buf,
            gated.len(),
        );
        let h = self.conv(&gated, &format!("{local}.point_conv.conv"), c, 1, 1, false, false)?;
        self.rms_norm(&h, &format!("{local}.point_conv.norm"), Some(&x))
    }
}

/// The MGVQ encoder and quantiser of one config, recorded on a WebGPU device.
pub struct WgslMgvq {
    device: wgpu::Device,
    queue: wgpu::Queue,
    pipelines: Vec<wgpu::ComputePipeline>,
    steps: Vec<Dispatch>,
    input: wgpu::Buffer,
    latent: Act,
    codes: wgpu::Buffer,
    config: Config,
}

/// A device from the default adapter (the browser's `navigator.gpu`, or the system's Vulkan,
/// Metal or DX12 driver natively).
pub async fn request_device() -> Result<(wgpu::Device, wgpu::Queue)> {
    let instance = wgpu::Instance::default();
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions::default())
        .await
        .map_err(|e| Error::Tensor(format!("no WebGPU adapter: {e}")))?;
    adapter
        .request_device(&wgpu::DeviceDescriptor::default())
        .await
        .map_err(|e| Error::Tensor(format!("the WebGPU adapter refused a device: {e}")))
}

impl WgslMgvq {
    /// Uploads the encoder `cfg` describes from `src` (keys under `prefix`, e.g. `mgvq.`, as
    /// [`crate::mgvq::Mgvq::load`] names them) and records its forward pass on `device`.
    /// A bad config or checkpoint is an [`Error::Config`] or [`Error::Weights`] naming it; the
    /// device refusing the kernels or buffers is an [`Error::Tensor`].
    pub async fn load(
        device: wgpu::Device, queue: wgpu::Queue, src: &dyn TensorSource, prefix: &str, cfg: &Config,
    ) -> Result<Self> {
        cfg.validate()?;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("mgvq.wgsl"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let storage = |binding, read_only| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: None,
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
                storage(1, true),
                storage(2, true),
                storage(3, true),
                storage(4, false),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: None,
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipelines = Kernel::ALL
            .iter()
            .map(|k| {
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(k.entry()),
                    layout: Some(&pipeline_layout),
                    module: &module,
                    entry_point: Some(k.entry()),
                    compilation_options: Default::default(),
                    cache: None,
                })
            })
            .collect();
        let s = cfg.image_size;
        let input = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("pixels"),
            size: (3 * s * s * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let unused = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 4,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let mut r = Recorder {
            device: &device,
            layout: &layout,
            src,
            prefix: prefix.to_string(),
            unused,
            steps: Vec::new(),
            eps: cfg.norm_eps as f32,
        };
        let (latent, codes) = Self::record(&mut r, Act { buf: input.clone(), c: 3, h: s, w: s }, cfg)?;
        let steps = std::mem::take(&mut r.steps);
        if let Some(e) = scope.pop().await {
            return Err(Error::Tensor(format!("WebGPU refused the WGSL encoder: {e}")));
        }
        Ok(Self { device, queue, pipelines, steps, input, latent, codes, config: cfg.clone() })
    }

    /// The forward pass of [`crate::mgvq::Mgvq::latent`] and `quantize`, recorded.
    fn record(r: &mut Recorder<'_>, pixels: Act, cfg: &Config) -> Result<(Act, wgpu::Buffer)> {
        let (w, d, t) = (&cfg.width_list, &cfg.depth_list, &cfg.block_type);
        let unshuffle_in = d[0] == 0;
        let first = if unshuffle_in { w[1] / 4 } else { w[0] };
        let mut h = r.conv(&pixels, "encoder.project_in.conv.conv", first, 3, 1, true, false)?;
        if unshuffle_in {
            h = r.unshuffle(&h, None);
        }
        for s in 0..w.len() {
            for i in 0..d[s] {
                let p = format!("encoder.stages.{s}.op_list.{i}");
                h = match t[s] {
                    BlockType::ResBlock => r.res_block(&h, &p)?,
                    BlockType::EvitGlu => r.evit_glu(&h, &p, cfg)?,
                };
            }
            if s + 1 < w.len() && d[s] > 0 {
                let name = format!("encoder.stages.{s}.op_list.{}.main.conv.conv", d[s]);
                let y = r.conv(&h, &name, w[s + 1] / 4, 3, 1, true, false)?;
                h = r.unshuffle(&y, Some(&h));
            }
        }
        let lc = cfg.latent_channels;
        let y = r.conv(&h, "encoder.project_out.main.op_list.0.conv", lc, 3, 1, true, false)?;
        let out = r.output(lc, h.h, h.w);
        let n = [h.c, lc, h.h * h.w, 0, 0, 0, 0, 0];
        r.dispatch(Kernel::AvgAdd, n, [Some(&y.buf), Some(&h.buf), None], &out.buf, out.len());
        let latent = r.conv(&out, "quant_conv", lc, 1, cfg.groups, true, false)?;
        // The codebook's rows L2-normalised once, on the host (`F.normalize`).
        let (g, gd, per) = (cfg.groups, cfg.group_dim(), cfg.codes_per_group());
        let mut book = r.weight("quantize.embedding.weight", &[cfg.codebook_size, gd])?;
        for row in book.chunks_mut(gd) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|v| *v /= norm);
        }
        let book = r.upload(&book);
        let hw = latent.h * latent.w;
        let codes = r.output(hw, g, 1);
        r.dispatch(
            Kernel::Quantize,
            [g, gd, per, hw, 0, 0, 0, 0],
            [Some(&latent.buf), Some(&book), None],
            &codes.buf,
            hw * g,
        );
        Ok((latent, codes.buf))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Dispatches per encoding.
    pub fn dispatches(&self) -> usize {
        self.steps.len()
    }

    /// The codes `[h*w][G]` of pixels in [-1, 1], CHW `[3, s, s]`
    /// ([`crate::mgvq::preprocess`]), and with `latent` the latent after `quant_conv`,
    /// `[C, h, w]` row-major.
    pub async fn encode(&self, pixels: &[f32], latent: bool) -> Result<(Vec<Vec<u16>>, Option<Vec<f32>>)> {
        let s = self.config.image_size;
        if pixels.len() != 3 * s * s {
            return Err(Error::Image(format!(
                "the WGSL encoder takes 3×{s}×{s} pixels, got {} values",
                pixels.len()
            )));
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        self.queue.write_buffer(&self.input, 0, &bytes_of(pixels));
        let mut enc = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for step in &self.steps {
                // `pipelines` follows `Kernel::ALL`, the declaration order.
                pass.set_pipeline(&self.pipelines[step.kernel as usize]);
                pass.set_bind_group(0, &step.bind, &[]);
                pass.dispatch_workgroups(step.groups[0], step.groups[1], 1);
            }
        }
        let codes_size = self.codes.size();
        let latent_size = if latent { (self.latent.len() * 4) as u64 } else { 0 };
        let read = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back"),
            size: codes_size + latent_size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        enc.copy_buffer_to_buffer(&self.codes, 0, &read, 0, codes_size);
        if latent {
            enc.copy_buffer_to_buffer(&self.latent.buf, 0, &read, codes_size, latent_size);
        }
        self.queue.submit([enc.finish()]);
        let (tx, rx) = futures_channel::oneshot::channel();
        read.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Tensor(format!("the WGSL encoder did not finish: {e}")))?;
        let mapped = rx.await.map_err(|_| Error::Tensor("the WebGPU device went away mid-read".into()))?;
        if let Some(e) = scope.pop().await {
            return Err(Error::Tensor(format!("WebGPU refused the WGSL encoder's dispatches: {e}")));
        }
        mapped.map_err(|e| Error::Tensor(format!("cannot read the WGSL encoder's output: {e}")))?;
        let host: Vec<f32> = {
            let view = read.get_mapped_range(..);
            view.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        };
        read.unmap();
        let g = self.config.groups;
        let n_codes = codes_size as usize / 4;
        let codes = host[..n_codes].chunks(g).map(|row| row.iter().map(|&c| c as u16).collect()).collect();
        Ok((codes, latent.then(|| host[n_codes..].to_vec())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatches_past_the_workgroup_limit_spill_into_y() {
        assert_eq!(workgroups(1), [1, 1]);
        assert_eq!(workgroups(64 * 65_535), [65_535, 1]);
        assert_eq!(workgroups(64 * 65_535 + 1), [65_535, 2]);
    }

    #[test]
    fn pipelines_are_indexed_by_declaration_order() {
        for (i, k) in Kernel::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "{}", k.entry());
        }
    }

    #[test]
    fn params_are_eight_u32_then_eps() {
        let b = params([1, 2, 3, 4, 5, 6, 7, 8], 0.5);
        assert_eq!(u32::from_le_bytes(b[28..32].try_into().unwrap()), 8);
        assert_eq!(f32::from_le_bytes(b[32..36].try_into().unwrap()), 0.5);
    }
}
