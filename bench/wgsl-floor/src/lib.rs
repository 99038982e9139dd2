//! The size floor of a hand-written WGSL path for the page's encoder: the `wgpu` crate on
//! WebGPU with one compute pipeline (a 9-tap convolution kernel), a dispatch and a read-back.
//! `bench/wgsl-size-floor.sh` builds it like the page's wasm and prints its size, the floor
//! a WGSL-only build of the page's encoder (`shaders/mgvq.wgsl`) would start from (sizes in
//! docs/performance.md#browser).

use wasm_bindgen::prelude::*;

const SHADER: &str = r#"
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if (i >= arrayLength(&y)) { return; }
    var acc = 0.0;
    for (var k = 0u; k < 9u; k++) { acc += x[(i + k) % arrayLength(&x)] * w[k]; }
    y[i] = acc;
}
"#;

#[wasm_bindgen]
pub async fn run(n: u32) -> Result<f32, JsValue> {
    let instance = wgpu::Instance::default();
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions::default())
        .await
        .map_err(|e| JsValue::from_str(&e.to_string()))?;
    let (device, queue) = adapter
        .request_device(&wgpu::DeviceDescriptor::default())
        .await
        .map_err(|e| JsValue::from_str(&e.to_string()))?;
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(SHADER.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let size = (n as u64) * 4;
    let mk = |usage| device.create_buffer(&wgpu::BufferDescriptor { label: None, size, usage, mapped_at_creation: false });
    let x = mk(wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST);
    let w = mk(wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST);
    let y = mk(wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC);
    let read = mk(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry { binding: 0, resource: x.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 1, resource: w.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 2, resource: y.as_entire_binding() },
        ],
    });
    let mut enc = device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(n.div_ceil(64), 1, 1);
    }
    enc.copy_buffer_to_buffer(&y, 0, &read, 0, size);
    queue.submit([enc.finish()]);
    read.slice(..).map_async(wgpu::MapMode::Read, |_| {});
    Ok(0.0)
}
