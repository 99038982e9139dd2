//! MGVQ tokenizer, encoder side: the DC-AE/EfficientViT-style encoder (project_in conv +
//! pixel-unshuffle, ResBlocks with TritonRMSNorm2d, residual pixel-unshuffle downsampling with
//! channel-averaging shortcuts, EViT_GLU blocks of LiteMLA linear attention and GLUMBConv,
//! project_out with its averaging shortcut), then `quant_conv` and multi-group quantisation:
//! G groups, each with its own slice of the codebook, L2-normalised vectors and codes.
//!
//! Loads the official key names (`encoder.*`, `quant_conv.*`, `quantize.embedding.weight`);
//! `fixtures/convert_mgvq.py` turns the official `.pt` files into safetensors.

use burn::module::{Initializer, Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::activation::{relu, silu};
use burn::tensor::{backend::Backend, DType, Int, Tensor};
use image::{imageops::FilterType, RgbImage};

pub use crate::config::{BlockType, MgvqConfig as Config};
use crate::loader::Loader;
use crate::preprocess::{expand_to_square, CLIP_MEAN};
use crate::Error;

type Result<T> = std::result::Result<T, Error>;

/// `TritonRMSNorm2d`: RMS over channels at each pixel, then an affine map (weight and bias).
#[derive(Module, Debug)]
pub struct RmsNorm2d<B: Backend> {
    weight: Param<Tensor<B, 1>>,
    bias: Param<Tensor<B, 1>>,
    eps: f64,
}

impl<B: Backend> RmsNorm2d<B> {
    fn load(vb: &Loader<B>, c: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.param("weight", [c], Initializer::Ones)?,
            bias: vb.param("bias", [c], Initializer::Zeros)?,
            eps,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, c, _, _] = x.dims();
        // The mean of squares in f32 whatever `x`'s dtype (as burn's RmsNorm).
        let dtype = x.dtype();
        let rms = (x.clone().cast(DType::F32).powi_scalar(2).mean_dim(1) + self.eps).sqrt();
        x / rms.cast(dtype) * self.weight.val().reshape([1, c, 1, 1]) + self.bias.val().reshape([1, c, 1, 1])
    }
}

/// PyTorch's `pixel_unshuffle(x, 2)`: channel `c*4 + i*2 + j` holds offset `(i, j)`.
pub fn pixel_unshuffle<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h / 2, 2, w / 2, 2]).permute([0, 1, 3, 5, 2, 4]).reshape([b, c * 4, h / 2, w / 2])
}

/// Mean over consecutive groups of channels, `c_in → c_out`.
pub fn channel_average<B: Backend>(x: Tensor<B, 4>, c_out: usize) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c_out, c / c_out, h, w]).mean_dim(2).reshape([b, c_out, h, w])
}

/// `c` applied to `x` (stride 1, "same" padding, one group: every convolution of the encoder
/// but the depthwise and grouped ones), by burn's `conv2d` or, with `products`, as one matrix
/// product: a 1×1 convolution multiplies the features `[b, in, h·w]` directly, a `k×k` one the
/// `k²` shifted copies of the padded input stacked along the channels (im2col out of whole-row
/// copies), in the order of candle's own im2col (the same results to the bit on the demo
/// models; `tests/mgvq.rs` checks codes and latents). Written by hand for the CPU:
/// burn-candle's `conv2d` builds its im2col element by element and copies a 1×1 convolution's
/// input and output the same way, a sizeable share of an encoding (see
/// docs/performance.md#serving).
/// The GPU backends keep their kernels, and the browser, whose memory the `k²` copies would
/// take, keeps `conv2d`.
fn conv<B: Backend>(c: &Conv2d<B>, x: Tensor<B, 4>, products: bool) -> Tensor<B, 4> {
    let [co, _, k, kw] = c.weight.dims();
    let p = k / 2;
    let same = c.padding == PaddingConfig2d::Explicit(p, p, p, p);
    if !products
        || k != kw
        || k % 2 == 0
        || !same
        || c.stride != [1, 1]
        || c.dilation != [1, 1]
        || c.groups != 1
    {
        return c.forward(x);
    }
    let [b, ci, h, w] = x.dims();
    let (weight, features) = if k == 1 {
        (c.weight.val().reshape([1, co, ci]), x.reshape([b, ci, h * w]))
    } else {
        let xp = pad_same(x, p);
        let cols: Vec<Tensor<B, 4>> =
            (0..k * k).map(|t| xp.clone().slice([0..b, 0..ci, t / k..t / k + h, t % k..t % k + w])).collect();
        let weight = c.weight.val().permute([0, 2, 3, 1]).reshape([1, co, k * k * ci]);
        (weight, Tensor::cat(cols, 1).reshape([b, k * k * ci, h * w]))
    };
    let weight = if b > 1 { weight.repeat_dim(0, b) } else { weight };
    let y = weight.matmul(features).reshape([b, co, h, w]);
    match &c.bias {
        Some(bias) => y + bias.val().reshape([1, co, 1, 1]),
        None => y,
    }
}

/// `x` `[b, c, h, w]` with `p` zeros on every side, in `x`'s own dtype (burn's `pad` builds its
/// canvas in the device's default dtype, which under a half-precision model is not this f32
/// encoder's).
fn pad_same<B: Backend>(x: Tensor<B, 4>, p: usize) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    Tensor::<B, 4>::zeros([b, c, h + 2 * p, w + 2 * p], (&x.device(), x.dtype()))
        .slice_assign([0..b, 0..c, p..p + h, p..p + w], x)
}

/// `ResidualBlock(ResBlock)`: `x + norm(conv2(silu(conv1(x))))`.
#[derive(Module, Debug)]
pub struct ResBlock<B: Backend> {
    conv1: Conv2d<B>,
    conv2: Conv2d<B>,
    norm: RmsNorm2d<B>,
    /// Convolutions as products (see [`conv`]).
    products: bool,
}

impl<B: Backend> ResBlock<B> {
    pub fn load(vb: &Loader<B>, c: usize, eps: f64) -> Result<Self> {
        let m = vb.pp("main");
        Ok(Self {
            conv1: m.conv2d_padded("conv1.conv", c, c, 3, 1, 1, 1, true)?,
            conv2: m.conv2d_padded("conv2.conv", c, c, 3, 1, 1, 1, false)?,
            norm: RmsNorm2d::load(&m.pp("conv2.norm"), c, eps)?,
            products: false,
        })
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let y = self.norm.forward(conv(
            &self.conv2,
            silu(conv(&self.conv1, x.clone(), self.products)),
            self.products,
        ));
        x + y
    }
}

/// Residual downsampling: `pixel_unshuffle(conv(x)) + channel_average(pixel_unshuffle(x))`.
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    conv: Conv2d<B>,
    c_out: usize,
    /// Convolutions as products (see [`conv`]).
    products: bool,
}

impl<B: Backend> Downsample<B> {
    fn load(vb: &Loader<B>, c_in: usize, c_out: usize) -> Result<Self> {
        Ok(Self {
            conv: vb.pp("main").conv2d_padded("conv.conv", c_in, c_out / 4, 3, 1, 1, 1, true)?,
            c_out,
            products: false,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        pixel_unshuffle(conv(&self.conv, x.clone(), self.products))
            + channel_average(pixel_unshuffle(x), self.c_out)
    }
}

/// A depthwise convolution (one `k×k` filter per channel, stride 1, "same" padding) computed
/// as `k²` shifted multiply-adds. Written by hand because burn-candle runs a grouped
/// convolution as one im2col + matmul per group: hundreds of tiny matmuls for the GLU's
/// depthwise layer, which made it the slowest part of training small models. Same parameters
/// and checkpoint keys as the `nn.Conv2d` it replaces.
#[derive(Module, Debug)]
pub struct DepthwiseConv<B: Backend> {
    /// `[c, 1, k, k]`, as `nn.Conv2d` stores it.
    weight: Param<Tensor<B, 4>>,
    bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> DepthwiseConv<B> {
    fn new(conv: Conv2d<B>) -> Self {
        Self { weight: conv.weight, bias: conv.bias }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let k = self.weight.dims()[2];
        let p = k / 2;
        let xp = pad_same(x, p);
        let weight = self.weight.val();
        let mut acc: Option<Tensor<B, 4>> = None;
        for dy in 0..k {
            for dx in 0..k {
                let tap = weight.clone().slice([0..c, 0..1, dy..dy + 1, dx..dx + 1]).reshape([1, c, 1, 1]);
                let term = xp.clone().slice([0..b, 0..c, dy..dy + h, dx..dx + w]) * tap;
                acc = Some(match acc {
                    Some(a) => a + term,
                    None => term,
                });
            }
        }
        let out = acc.expect("a kernel has at least one tap");
        match &self.bias {
            Some(bias) => out + bias.val().reshape([1, c, 1, 1]),
            None => out,
        }
    }
}

/// A grouped 1×1 convolution as one batched matmul per image (`[G, out/G, in/G]` weights over
/// `[G, in/G, h·w]` features). Written by hand because burn-candle cannot differentiate a
/// grouped convolution (its backward pass needs a grouped transposed convolution, which
/// candle lacks), and the tokenizer trains through `quant_conv`. Same parameters and
/// checkpoint keys as the `nn.Conv2d` it replaces.
#[derive(Module, Debug)]
pub struct GroupedPointwise<B: Backend> {
    /// `[out, in / groups, 1, 1]`, as `nn.Conv2d` stores it.
    weight: Param<Tensor<B, 4>>,
    bias: Option<Param<Tensor<B, 1>>>,
    groups: usize,
}

impl<B: Backend> GroupedPointwise<B> {
    fn new(conv: Conv2d<B>, groups: usize) -> Self {
        Self { weight: conv.weight, bias: conv.bias, groups }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let g = self.groups;
        let [out, cin_g, _, _] = self.weight.dims();
        let weight = self.weight.val().reshape([1, g, out / g, cin_g]).expand([b, g, out / g, cin_g]);
        let y = weight.matmul(x.reshape([b, g, c / g, h * w])).reshape([b, out, h, w]);
        match &self.bias {
            Some(bias) => y + bias.val().reshape([1, out, 1, 1]),
            None => y,
        }
    }
}

/// `EfficientViTBlock` with LiteMLA (ReLU linear attention, f32) and GLUMBConv, each residual.
#[derive(Module, Debug)]
pub struct EvitGlu<B: Backend> {
    qkv: Conv2d<B>,
    proj: Conv2d<B>,
    proj_norm: RmsNorm2d<B>,
    inverted_conv: Conv2d<B>,
    depth_conv: DepthwiseConv<B>,
    point_conv: Conv2d<B>,
    point_norm: RmsNorm2d<B>,
    dim: usize,
    /// Convolutions as products (see [`conv`]).
    products: bool,
}

impl<B: Backend> EvitGlu<B> {
    fn load(vb: &Loader<B>, c: usize, cfg: &Config) -> Result<Self> {
        let ctx = vb.pp("context_module.main");
        let local = vb.pp("local_module.main");
        let mid = c * cfg.expand_ratio;
        Ok(Self {
            qkv: ctx.conv2d("qkv.conv", c, 3 * c, 1, 1, false)?,
            proj: ctx.conv2d("proj.conv", c, c, 1, 1, false)?,
            proj_norm: RmsNorm2d::load(&ctx.pp("proj.norm"), c, cfg.norm_eps)?,
            inverted_conv: local.conv2d("inverted_conv.conv", c, 2 * mid, 1, 1, true)?,
            depth_conv: DepthwiseConv::new(local.conv2d_padded(
                "depth_conv.conv",
                2 * mid,
                2 * mid,
                3,
                1,
                1,
                2 * mid,
                true,
            )?),
            point_conv: local.conv2d("point_conv.conv", mid, c, 1, 1, false)?,
            point_norm: RmsNorm2d::load(&local.pp("point_conv.norm"), c, cfg.norm_eps)?,
            dim: cfg.attention_dim,
            products: false,
        })
    }

    fn lite_mla(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let d = self.dim;
        let heads = c / d;
        // The linear attention in f32 whatever the model's dtype, as the reference (its sums
        // over all positions and the 1e-15 guard are lost in half precision).
        let qkv = conv(&self.qkv, x, self.products).reshape([b, heads, 3 * d, h * w]);
        let dtype = qkv.dtype();
        let qkv = qkv.cast(DType::F32);
        let q = relu(qkv.clone().slice([0..b, 0..heads, 0..d, 0..h * w]));
        let k = relu(qkv.clone().slice([0..b, 0..heads, d..2 * d, 0..h * w]));
        let v = qkv.slice([0..b, 0..heads, 2 * d..3 * d, 0..h * w]);
        let ones = Tensor::<B, 4>::ones([b, heads, 1, h * w], (&v.device(), v.dtype()));
        let v = Tensor::cat(vec![v, ones], 2); // [b, heads, d + 1, hw]
        let out = v.matmul(k.swap_dims(2, 3)).matmul(q); // [b, heads, d + 1, hw]
        let num = out.clone().slice([0..b, 0..heads, 0..d, 0..h * w]);
        let den = out.slice([0..b, 0..heads, d..d + 1, 0..h * w]) + 1e-15;
        let out = (num / den).reshape([b, c, h, w]).cast(dtype);
        self.proj_norm.forward(conv(&self.proj, out, self.products))
    }

    fn glu_mbconv(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let y = self.depth_conv.forward(silu(conv(&self.inverted_conv, x, self.products)));
        let [b, c2, h, w] = y.dims();
        let half = c2 / 2;
        let gate = silu(y.clone().slice([0..b, half..c2, 0..h, 0..w]));
        let y = y.slice([0..b, 0..half, 0..h, 0..w]) * gate;
        self.point_norm.forward(conv(&self.point_conv, y, self.products))
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = x.clone() + self.lite_mla(x);
        x.clone() + self.glu_mbconv(x)
    }
}

#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // a handful per model, built once; boxing would only add indirection
pub enum Block<B: Backend> {
    Res(ResBlock<B>),
    Evit(EvitGlu<B>),
    Down(Downsample<B>),
}

impl<B: Backend> Block<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Block::Res(b) => b.forward(x),
            Block::Evit(b) => b.forward(x),
            Block::Down(b) => b.forward(x),
        }
    }
}

/// The result of [`Mgvq::encode`].
pub struct Encoded<B: Backend> {
    /// The latent after `quant_conv`, `[b, C, h, w]`.
    pub latent: Tensor<B, 4>,
    /// Quantised features `[b, C, h, w]`: per group, the unit-norm code vector.
    pub q: Tensor<B, 4>,
    /// Per position (row-major over `h, w`, then batch) and group, the code index within the
    /// group's slice of the codebook: `[b * h * w][G]`.
    pub codes: Vec<Vec<u16>>,
}

#[derive(Module, Debug)]
pub struct Mgvq<B: Backend> {
    project_in: Conv2d<B>,
    unshuffle_in: bool,
    blocks: Vec<Block<B>>,
    project_out: Conv2d<B>,
    quant_conv: GroupedPointwise<B>,
    /// The codebook `[codebook_size, group_dim]`, as stored (rows are L2-normalised at use).
    codebook: Param<Tensor<B, 2>>,
    #[module(skip)]
    config: Config,
    /// Convolutions as products (see [`conv`]; [`Mgvq::with_conv_products`]).
    products: bool,
}

impl Config {
    /// A randomly initialised encoder and codebook of this shape (burn's initialisers).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Mgvq<B>> {
        Mgvq::load(&Loader::init(device), self)
    }
}

impl<B: Backend> Mgvq<B> {
    /// Loads the official key names under `vb` (or initialises, see [`Loader::init`]), with
    /// parameter ids derived from checkpoint keys.
    pub fn load(vb: &Loader<B>, c: &Config) -> Result<Self> {
        c.validate()?;
        let (w, d, t) = (&c.width_list, &c.depth_list, &c.block_type);
        let e = vb.pp("encoder");
        let unshuffle_in = d[0] == 0;
        let first = if unshuffle_in { w[1] } else { w[0] };
        let project_in = e.conv2d_padded(
            "project_in.conv.conv",
            3,
            if unshuffle_in { first / 4 } else { first },
            3,
            1,
            1,
            1,
            true,
        )?;
        let mut blocks = Vec::new();
        for s in 0..w.len() {
            for i in 0..d[s] {
                let p = e.pp(format!("stages.{s}.op_list.{i}"));
                blocks.push(match t[s] {
                    BlockType::ResBlock => Block::Res(ResBlock::load(&p, w[s], c.norm_eps)?),
                    BlockType::EvitGlu => Block::Evit(EvitGlu::load(&p, w[s], c)?),
                });
            }
            if s + 1 < w.len() && d[s] > 0 {
                blocks.push(Block::Down(Downsample::load(
                    &e.pp(format!("stages.{s}.op_list.{}", d[s])),
                    w[s],
                    w[s + 1],
                )?));
            }
        }
        let last = w[w.len() - 1]; // validate() guarantees at least two stages
        let lc = c.latent_channels;
        let project_out = e.conv2d_padded("project_out.main.op_list.0.conv", last, lc, 3, 1, 1, 1, true)?;
        let quant_conv =
            GroupedPointwise::new(vb.conv2d_padded("quant_conv", lc, lc, 1, 1, 0, c.groups, true)?, c.groups);
        let codebook = vb.pp("quantize.embedding").param(
            "weight",
            [c.codebook_size, c.group_dim()],
            Initializer::Normal { mean: 0.0, std: 1.0 },
        )?;
        let m = Self {
            project_in,
            unshuffle_in,
            blocks,
            project_out,
            quant_conv,
            codebook,
            config: c.clone(),
            products: false,
        };
        Ok(m)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The encoder with its convolutions computed as plain matrix products (`true`; see
    /// [`conv`]) or by burn's `conv2d` (`false`, the default): the same results, faster on a
    /// CPU backend.
    pub fn with_conv_products(mut self, on: bool) -> Self {
        self.products = on;
        for b in self.blocks.iter_mut() {
            match b {
                Block::Res(b) => b.products = on,
                Block::Evit(b) => b.products = on,
                Block::Down(b) => b.products = on,
            }
        }
        self
    }

    /// The latent after `quant_conv`, `[b, C, h, w]`, of pixels in [-1, 1], `[b, 3, s, s]`.
    pub fn latent(&self, pixels: Tensor<B, 4>) -> Tensor<B, 4> {
        // In the weights' dtype (f32 under a half-precision model: see `Loader::with_dtype`).
        let dtype = self.codebook.val().dtype();
        let pixels = pixels.cast(dtype);
        let mut h = conv(&self.project_in, pixels, self.products);
        if self.unshuffle_in {
            h = pixel_unshuffle(h);
        }
        for b in &self.blocks {
            h = b.forward(h);
        }
        let lc = self.config.latent_channels;
        let h = conv(&self.project_out, h.clone(), self.products) + channel_average(h, lc);
        self.quant_conv.forward(h)
    }

    /// Multi-group nearest-code quantisation of `latent` `[b, C, h, w]`: per group, the
    /// L2-normalised latent and its nearest L2-normalised code (differentiable with respect
    /// to the codebook, for training), and the code indices within the group.
    pub fn quantize(&self, latent: Tensor<B, 4>) -> Quantized<B> {
        let [b, _, hh, ww] = latent.dims();
        let (g, gd, per) = (self.config.groups, self.config.group_dim(), self.config.codes_per_group());
        let n = b * hh * ww;
        // Distances in f32 whatever the model's dtype: half precision cannot tell apart codes
        // a few thousandths apart.
        let dtype = latent.dtype();
        let latent = latent.cast(DType::F32);
        let codebook = l2_normalize(self.codebook.val().cast(DType::F32));
        let (mut zs, mut qs, mut indices) =
            (Vec::with_capacity(g), Vec::with_capacity(g), Vec::with_capacity(g));
        for i in 0..g {
            let zi = latent
                .clone()
                .slice([0..b, i * gd..(i + 1) * gd, 0..hh, 0..ww])
                .permute([0, 2, 3, 1])
                .reshape([n, gd]);
            let zi = l2_normalize(zi);
            let ei = codebook.clone().slice([i * per..(i + 1) * per, 0..gd]);
            // argmax of -|z|^2 - |e|^2 + 2 z.e, as the reference computes it.
            let score = zi.clone().matmul(ei.clone().transpose()) * 2.0
                - zi.clone().powi_scalar(2).sum_dim(1)
                - ei.clone().powi_scalar(2).sum_dim(1).transpose();
            let idx: Tensor<B, 1, Int> = score.argmax(1).reshape([n]);
            let to_map = |t: Tensor<B, 2>| t.reshape([b, hh, ww, gd]).permute([0, 3, 1, 2]);
            qs.push(to_map(ei.select(0, idx.clone())));
            zs.push(to_map(zi));
            indices.push(idx);
        }
        Quantized { z: Tensor::cat(zs, 1).cast(dtype), q: Tensor::cat(qs, 1).cast(dtype), indices }
    }

    /// Encodes pixels in [-1, 1], `[b, 3, s, s]`, to the latent, `q` and the codes.
    pub fn encode(&self, pixels: Tensor<B, 4>) -> Result<Encoded<B>> {
        let latent = self.latent(pixels);
        let quantized = self.quantize(latent.clone());
        let codes = codes_from_data(Tensor::stack::<2>(quantized.indices, 1).into_data())?;
        Ok(Encoded { latent, q: quantized.q, codes })
    }

    /// MGVQ's input pipeline ([`preprocess`]) for a decoded image: pixels `[1, 3, s, s]` on
    /// the codebook's device.
    pub fn pixels_of(&self, img: &RgbImage) -> Tensor<B, 4> {
        let s = self.config.image_size;
        let px = preprocess(img, s as u32);
        let codebook = self.codebook.val();
        Tensor::from_data(
            burn::tensor::TensorData::new(px, [1, 3, s, s]),
            (&codebook.device(), codebook.dtype()),
        )
    }

    /// The codes of a decoded image as a tensor on the device, `[h*w, G]`: read it back with
    /// [`codes_from_data`] (asynchronously where the backend requires it, as WebGPU does).
    pub fn code_tensor(&self, img: &RgbImage) -> Tensor<B, 2, Int> {
        Tensor::stack(self.quantize(self.latent(self.pixels_of(img))).indices, 1)
    }

    /// The codes of a decoded image, `[h*w][G]`: MGVQ's input pipeline ([`preprocess`]), then
    /// the encoder and quantiser. The worker's pixels go through the same steps, so a page
    /// that runs this gets the worker's codes.
    pub fn codes_of(&self, img: &RgbImage) -> Result<Vec<Vec<u16>>> {
        codes_from_data(self.code_tensor(img).into_data())
    }

    /// The stored codebook `[codebook_size, group_dim]` on the host, row-major.
    pub fn codebook_host(&self) -> Result<Vec<f32>> {
        self.codebook
            .val()
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| Error::Tensor(format!("cannot read the MGVQ codebook: {e:?}")))
    }

    /// Replaces the stored codebook (same shape, same parameter id), e.g. to restart dead
    /// codes in training.
    pub fn set_codebook(&mut self, rows: Vec<f32>) {
        let (id, old, mapper) = self.codebook.clone().consume();
        let shape = old.dims();
        let grad = old.is_require_grad();
        let mut t = Tensor::from_data(burn::tensor::TensorData::new(rows, shape), &old.device());
        if grad {
            t = t.require_grad();
        }
        self.codebook = Param::from_mapped_value(id, t, mapper);
    }
}

/// Where sent codes disagree with an image's latent: position (row-major, images one after
/// another), group, the code sent, the nearest code, and their squared distances to the
/// normalised latent (unit vectors: `2 − 2 z·e`).
#[derive(Debug, Clone, PartialEq)]
pub struct CodeDisagreement {
    pub position: usize,
    pub group: usize,
    pub sent: u16,
    pub nearest: u16,
    pub sent_distance: f32,
    pub nearest_distance: f32,
}

/// The result of [`Mgvq::check_codes`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CodeCheck {
    /// Codes that are not the nearest but within the tolerance of it (near-ties: another
    /// device's arithmetic may round either way).
    pub near_ties: usize,
    /// Codes farther than the tolerance from the nearest.
    pub disagreements: Vec<CodeDisagreement>,
}

impl<B: Backend> Mgvq<B> {
    /// Checks codes `[b*h*w][G]` computed elsewhere against `latent` `[b, C, h, w]` (from
    /// [`Mgvq::latent`]): a code is accepted when it is the nearest, or when its squared
    /// distance exceeds the nearest's by at most `rel_tol` of it (plus 1e-6, for latents that
    /// sit on a code). Distances on the host in f32, as [`Mgvq::quantize`] compares them.
    pub fn check_codes(&self, latent: Tensor<B, 4>, codes: &[Vec<u16>], rel_tol: f32) -> Result<CodeCheck> {
        let [b, c, hh, ww] = latent.dims();
        let (g, gd, per) = (self.config.groups, self.config.group_dim(), self.config.codes_per_group());
        let n = b * hh * ww;
        if codes.len() != n || codes.iter().any(|r| r.len() != g) {
            return Err(Error::Config(format!(
                "{} code rows of {} groups for a latent of {n} positions and {g} groups",
                codes.len(),
                codes.first().map_or(0, Vec::len)
            )));
        }
        let lat = latent
            .cast(DType::F32)
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| Error::Tensor(format!("cannot read the MGVQ latent: {e:?}")))?;
        let mut book = self.codebook_host()?;
        for row in book.chunks_mut(gd) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|x| *x /= norm);
        }
        let mut check = CodeCheck::default();
        let mut z = vec![0f32; gd];
        for (pos, row) in codes.iter().enumerate() {
            let (img, at) = (pos / (hh * ww), pos % (hh * ww));
            for (grp, &sent) in row.iter().enumerate() {
                for (k, zk) in z.iter_mut().enumerate() {
                    *zk = lat[((img * c + grp * gd + k) * hh * ww) + at];
                }
                let norm = z.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                z.iter_mut().for_each(|x| *x /= norm);
                let dist = |code: usize| {
                    let e = &book[(grp * per + code) * gd..(grp * per + code + 1) * gd];
                    z.iter().zip(e).map(|(a, b)| (a - b) * (a - b)).sum::<f32>()
                };
                let (mut nearest, mut best) = (0usize, f32::INFINITY);
                for code in 0..per {
                    let d = dist(code);
                    if d < best {
                        (nearest, best) = (code, d);
                    }
                }
                if sent as usize == nearest {
                    continue;
                }
                let d = if (sent as usize) < per { dist(sent as usize) } else { f32::INFINITY };
                if d <= best * (1.0 + rel_tol) + 1e-6 {
                    check.near_ties += 1;
                } else {
                    check.disagreements.push(CodeDisagreement {
                        position: pos,
                        group: grp,
                        sent,
                        nearest: nearest as u16,
                        sent_distance: d,
                        nearest_distance: best,
                    });
                }
            }
        }
        Ok(check)
    }
}

/// The result of [`Mgvq::quantize`].
pub struct Quantized<B: Backend> {
    /// The L2-normalised latent, per group `[b, C, h, w]`.
    pub z: Tensor<B, 4>,
    /// The nearest unit-norm code vector of each group, `[b, C, h, w]`.
    pub q: Tensor<B, 4>,
    /// Per group, the code index within the group, `[b * h * w]` (row-major over `h, w`).
    pub indices: Vec<Tensor<B, 1, Int>>,
}

impl<B: Backend> Mgvq<B> {
    /// Quantised features `[b, C, h, w]` from codes `[b*h*w][G]` (indices within each group,
    /// images one after another), e.g. codes a browser computed or a training run cached. The
    /// caller validates shape and range.
    pub fn q_from_codes(&self, codes: &[Vec<u16>]) -> Tensor<B, 4> {
        let (g, gd, per) = (self.config.groups, self.config.group_dim(), self.config.codes_per_group());
        let side = self.config.latent_side();
        let codebook = l2_normalize(self.codebook.val());
        let device = codebook.device();
        let qs = (0..g)
            .map(|i| {
                let idx: Vec<i64> = codes.iter().map(|row| (i * per + row[i] as usize) as i64).collect();
                let idx = Tensor::<B, 1, Int>::from_data(
                    burn::tensor::TensorData::new(idx, [codes.len()]),
                    &device,
                );
                let b = codes.len() / (side * side);
                codebook.clone().select(0, idx).reshape([b, side, side, gd]).permute([0, 3, 1, 2])
            })
            .collect();
        Tensor::cat(qs, 1)
    }
}

/// Codes `[n][G]` from the data of a code tensor `[n, G]` ([`Mgvq::code_tensor`]).
pub fn codes_from_data(data: burn::tensor::TensorData) -> Result<Vec<Vec<u16>>> {
    let groups = data.shape.get(1).copied().unwrap_or(1).max(1);
    let host = data
        .convert::<i64>()
        .to_vec::<i64>()
        .map_err(|e| Error::Tensor(format!("cannot read MGVQ codes: {e:?}")))?;
    host.chunks(groups)
        .map(|row| {
            row.iter()
                .map(|&c| {
                    u16::try_from(c).map_err(|_| Error::Tensor(format!("MGVQ code {c} is out of range")))
                })
                .collect()
        })
        .collect()
}

/// Rows divided by their L2 norm (clamped at 1e-12, as `F.normalize`).
fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// MGVQ's input pipeline: pad to a square with the CLIP mean colour (as for the vision tower),
/// bicubic resize to `size`, then `(x / 255 - 0.5) * 2`. Returns CHW f32 `[3, size, size]`.
pub fn preprocess(img: &RgbImage, size: u32) -> Vec<f32> {
    let fill = image::Rgb(CLIP_MEAN.map(|m| (m * 255.0) as u8));
    let sq = expand_to_square(img, fill);
    let r = image::imageops::resize(&sq, size, size, FilterType::CatmullRom);
    let plane = (size * size) as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in r.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (px.0[c] as f32 / 255.0 - 0.5) * 2.0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::TensorData;

    type B = NdArray;

    /// A tiny encoder whose codebook has, in every group, code 0 along the group's first axis,
    /// code 1 along its second, and every other code pointing away from both.
    fn designed() -> Mgvq<B> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/mgvq-tiny/config.json");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let cfg = Config::from_json(&v).unwrap();
        let mut m = cfg.init::<B>(&Default::default()).unwrap();
        let (gd, n, per) = (cfg.group_dim(), cfg.codebook_size, cfg.codes_per_group());
        assert!(gd >= 2, "the test needs two axes per group");
        let rows: Vec<f32> = (0..n)
            .flat_map(|i| {
                (0..gd).map(move |k| match i % per {
                    0 => f32::from(k == 0),
                    1 => f32::from(k == 1),
                    _ => -1.0,
                })
            })
            .collect();
        m.set_codebook(rows);
        m
    }

    /// A one-position latent: group 0 along `(1, y)`, the other groups along their first axis.
    fn latent(m: &Mgvq<B>, y: f32) -> Tensor<B, 4> {
        let c = m.config();
        let (g, gd) = (c.groups, c.group_dim());
        let data: Vec<f32> = (0..g * gd)
            .map(|i| match (i / gd, i % gd) {
                (0, 0) => 1.0,
                (0, 1) => y,
                (_, 0) => 1.0,
                _ => 0.0,
            })
            .collect();
        Tensor::from_data(TensorData::new(data, [1, g * gd, 1, 1]), &Default::default())
    }

    #[test]
    fn near_ties_are_accepted_and_real_disagreements_named() {
        let m = designed();
        let g = m.config().groups;
        let sent = |first: u16| {
            vec![std::iter::once(first).chain(std::iter::repeat_n(0, g - 1)).collect::<Vec<u16>>()]
        };
        // The nearest code sent: nothing to report.
        assert_eq!(m.check_codes(latent(&m, 0.5), &sent(0), 1e-3).unwrap(), CodeCheck::default());
        // An exact tie and a near one (distances 0.58578 and 0.58583): either code is accepted.
        for y in [1.0, 0.99995] {
            let c = m.check_codes(latent(&m, y), &sent(1), 1e-3).unwrap();
            assert_eq!((c.near_ties, c.disagreements.len()), (1, 0), "y = {y}");
        }
        // Code 1 for a latent much nearer code 0: refused, with both distances.
        let c = m.check_codes(latent(&m, 0.5), &sent(1), 1e-3).unwrap();
        assert_eq!(c.near_ties, 0);
        let d = &c.disagreements[0];
        assert_eq!((d.position, d.group, d.sent, d.nearest), (0, 0, 1, 0));
        let z = [1.0 / 1.25f32.sqrt(), 0.5 / 1.25f32.sqrt()];
        assert!((d.nearest_distance - ((z[0] - 1.0).powi(2) + z[1].powi(2))).abs() < 1e-6);
        assert!((d.sent_distance - (z[0].powi(2) + (z[1] - 1.0).powi(2))).abs() < 1e-6);
        // A tie beyond a zero tolerance is still a disagreement only when the distances differ.
        assert_eq!(m.check_codes(latent(&m, 1.0), &sent(1), 0.0).unwrap().disagreements.len(), 0);
        assert_eq!(m.check_codes(latent(&m, 0.99), &sent(1), 0.0).unwrap().disagreements.len(), 1);
        // Rows of the wrong shape are an error, not a panic.
        assert!(m.check_codes(latent(&m, 1.0), &[vec![0]], 1e-3).is_err());
    }
}
