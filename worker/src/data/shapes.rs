//! ShapesVQA v1: a procedural visual question answering set with a frozen spec, so other
//! tools can generate the same distribution. 336×336 scenes of 1–4 objects on a 3×3 grid of
//! 112-px cells; each object has a shape, a colour, a size and a texture, and no two objects
//! of a scene share (shape, colour). Questions come in two kinds: S (semantic: shape, color,
//! exist, count) and D (detail: texture, size, position); answers are lowercase words or
//! digits.
//!
//! Shapes are rasterised by testing each pixel centre against the geometry, written here
//! rather than with a drawing crate because the spec defines the strokes and stripes by
//! containment ("a 4-px stroke inside the boundary", "bands from the shape's top edge clipped
//! to the shape"), which drawing crates do not offer.

use image::{Rgb, RgbImage};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;

pub const SIZE: u32 = 336;
pub const CELL: u32 = 112;
pub const BACKGROUND: [u8; 3] = [240, 240, 240];
const STROKE: f32 = 4.0;
const BAND: f32 = 6.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Texture {
    Solid,
    Striped,
    Outline,
}

pub const SHAPES: [Shape; 4] = [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Star];
pub const COLORS: [Color; 6] =
    [Color::Red, Color::Green, Color::Blue, Color::Yellow, Color::Purple, Color::Orange];
pub const TEXTURES: [Texture; 3] = [Texture::Solid, Texture::Striped, Texture::Outline];

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
        }
    }
}

impl Color {
    pub fn name(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Yellow => "yellow",
            Color::Purple => "purple",
            Color::Orange => "orange",
        }
    }

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [220, 40, 40],
            Color::Green => [40, 160, 60],
            Color::Blue => [40, 90, 220],
            Color::Yellow => [230, 190, 20],
            Color::Purple => [140, 60, 180],
            Color::Orange => [240, 130, 30],
        }
    }
}

impl Texture {
    pub fn name(self) -> &'static str {
        match self {
            Texture::Solid => "solid",
            Texture::Striped => "striped",
            Texture::Outline => "outline",
        }
    }
}

/// One object of a scene.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Object {
    pub shape: Shape,
    pub color: Color,
    /// Bounding extent in pixels: 40 (small) or 80 (large).
    pub extent: u32,
    pub texture: Texture,
    /// Grid cell, row-major `0..9`.
    pub cell: usize,
    /// Centre in pixels (cell centre plus jitter).
    pub cx: i32,
    pub cy: i32,
}

impl Object {
    pub fn column(&self) -> &'static str {
        ["left", "middle", "right"][self.cell % 3]
    }

    pub fn size_name(&self) -> &'static str {
        if self.extent == 40 {
            "small"
        } else {
            "large"
        }
    }

    /// Signed containment of the pixel centre `(x, y)`: `Some(d)` with `d` the distance to the
    /// boundary when inside, `None` outside.
    fn inside(&self, x: f32, y: f32) -> Option<f32> {
        let (cx, cy) = (self.cx as f32, self.cy as f32);
        let h = self.extent as f32 / 2.0;
        let (dx, dy) = (x - cx, y - cy);
        match self.shape {
            Shape::Circle => {
                let d = h - (dx * dx + dy * dy).sqrt();
                (d >= 0.0).then_some(d)
            }
            Shape::Square => {
                let d = (h - dx.abs()).min(h - dy.abs());
                (d >= 0.0).then_some(d)
            }
            Shape::Triangle => polygon_inside(&[(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], x, y),
            Shape::Star => {
                let outer = h;
                let inner = 0.4 * outer;
                let pts: Vec<(f32, f32)> = (0..10)
                    .map(|i| {
                        let r = if i % 2 == 0 { outer } else { inner };
                        let a = -std::f32::consts::FRAC_PI_2 + i as f32 * std::f32::consts::PI / 5.0;
                        (cx + r * a.cos(), cy + r * a.sin())
                    })
                    .collect();
                polygon_inside(&pts, x, y)
            }
        }
    }

    /// The colour this object paints at pixel centre `(x, y)`, if any.
    fn paint(&self, x: f32, y: f32) -> Option<[u8; 3]> {
        let d = self.inside(x, y)?;
        let top = self.cy as f32 - self.extent as f32 / 2.0;
        let on = match self.texture {
            Texture::Solid => true,
            Texture::Outline => d < STROKE,
            Texture::Striped => ((y - top) / BAND).floor() as i64 % 2 == 0,
        };
        on.then(|| self.color.rgb())
    }
}

/// Even-odd containment in a polygon, with the distance to its nearest edge.
fn polygon_inside(pts: &[(f32, f32)], x: f32, y: f32) -> Option<f32> {
    let mut inside = false;
    let mut dist = f32::INFINITY;
    for i in 0..pts.len() {
        let (a, b) = (pts[i], pts[(i + 1) % pts.len()]);
        if (a.1 > y) != (b.1 > y) && x < a.0 + (y - a.1) * (b.0 - a.0) / (b.1 - a.1) {
            inside = !inside;
        }
        let (ex, ey) = (b.0 - a.0, b.1 - a.1);
        let t = (((x - a.0) * ex + (y - a.1) * ey) / (ex * ex + ey * ey)).clamp(0.0, 1.0);
        let (px, py) = (a.0 + t * ex - x, a.1 + t * ey - y);
        dist = dist.min((px * px + py * py).sqrt());
    }
    inside.then_some(dist)
}

/// A scene: its objects, each in its own cell.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scene {
    pub objects: Vec<Object>,
}

/// The question of the description turn (training data only; not a ShapesVQA family).
pub const DESCRIBE: &str = "Describe the image.";

impl Scene {
    /// Every object, in reading order of the grid: `size color texture shape row column`,
    /// joined by ` ; ` (e.g. `small red striped circle top left ; large blue solid star middle
    /// right`). A dense target for training: every word depends on the image.
    pub fn describe(&self) -> String {
        let mut objs: Vec<&Object> = self.objects.iter().collect();
        objs.sort_by_key(|o| o.cell);
        let parts: Vec<String> = objs
            .iter()
            .map(|o| {
                format!(
                    "{} {} {} {} {} {}",
                    o.size_name(),
                    o.color.name(),
                    o.texture.name(),
                    o.shape.name(),
                    ["top", "center", "bottom"][o.cell / 3],
                    o.column()
                )
            })
            .collect();
        parts.join(" ; ")
    }

    /// Draws a scene per the spec.
    pub fn sample(rng: &mut StdRng) -> Self {
        let n = rng.random_range(1..=4);
        let mut cells: Vec<usize> = (0..9).collect();
        cells.shuffle(rng);
        let mut objects: Vec<Object> = Vec::with_capacity(n);
        for &cell in &cells[..n] {
            let (shape, color) = loop {
                let s = SHAPES[rng.random_range(0..SHAPES.len())];
                let c = COLORS[rng.random_range(0..COLORS.len())];
                if !objects.iter().any(|o| o.shape == s && o.color == c) {
                    break (s, c);
                }
            };
            let extent = if rng.random_bool(0.5) { 40 } else { 80 };
            let texture = TEXTURES[rng.random_range(0..TEXTURES.len())];
            let (col, row) = ((cell % 3) as i32, (cell / 3) as i32);
            let half = CELL as i32 / 2;
            let cx = col * CELL as i32 + half + rng.random_range(-10..=10);
            let cy = row * CELL as i32 + half + rng.random_range(-10..=10);
            objects.push(Object { shape, color, extent, texture, cell, cx, cy });
        }
        Self { objects }
    }

    pub fn render(&self) -> RgbImage {
        RgbImage::from_fn(SIZE, SIZE, |x, y| {
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            Rgb(self.objects.iter().find_map(|o| o.paint(fx, fy)).unwrap_or(BACKGROUND))
        })
    }

    fn with_color(&self, c: Color) -> Vec<&Object> {
        self.objects.iter().filter(|o| o.color == c).collect()
    }

    fn with_shape(&self, s: Shape) -> Vec<&Object> {
        self.objects.iter().filter(|o| o.shape == s).collect()
    }
}

/// A question family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Shape,
    Color,
    Exist,
    Count,
    Texture,
    Size,
    Position,
}

pub const FAMILIES: [Family; 7] = [
    Family::Shape,
    Family::Color,
    Family::Exist,
    Family::Count,
    Family::Texture,
    Family::Size,
    Family::Position,
];

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Shape => "shape",
            Family::Color => "color",
            Family::Exist => "exist",
            Family::Count => "count",
            Family::Texture => "texture",
            Family::Size => "size",
            Family::Position => "position",
        }
    }

    /// `S` (semantic) or `D` (detail).
    pub fn kind(self) -> &'static str {
        match self {
            Family::Shape | Family::Color | Family::Exist | Family::Count => "S",
            Family::Texture | Family::Size | Family::Position => "D",
        }
    }
}

/// A question about a scene and its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub family: Family,
    pub question: String,
    pub answer: String,
}

/// One question of `family` about `scene`, if the scene allows one (shape questions need a
/// colour that is unique in the scene, colour questions a unique shape).
pub fn ask(scene: &Scene, family: Family, rng: &mut StdRng) -> Option<Question> {
    let pick = |v: Vec<&Object>, rng: &mut StdRng| v.choose(rng).copied().copied();
    let (question, answer) = match family {
        Family::Shape => {
            let unique: Vec<&Object> =
                scene.objects.iter().filter(|o| scene.with_color(o.color).len() == 1).collect();
            let o = pick(unique, rng)?;
            (format!("What shape is the {} object?", o.color.name()), o.shape.name().to_string())
        }
        Family::Color => {
            let unique: Vec<&Object> =
                scene.objects.iter().filter(|o| scene.with_shape(o.shape).len() == 1).collect();
            let o = pick(unique, rng)?;
            (format!("What color is the {}?", o.shape.name()), o.color.name().to_string())
        }
        Family::Exist => {
            let (c, s, yes) = if rng.random_bool(0.5) {
                let o = pick(scene.objects.iter().collect(), rng)?;
                (o.color, o.shape, true)
            } else {
                let absent: Vec<(Color, Shape)> = COLORS
                    .iter()
                    .flat_map(|&c| SHAPES.iter().map(move |&s| (c, s)))
                    .filter(|&(c, s)| !scene.objects.iter().any(|o| o.color == c && o.shape == s))
                    .collect();
                let &(c, s) = absent.choose(rng)?;
                (c, s, false)
            };
            (format!("Is there a {} {}?", c.name(), s.name()), if yes { "yes" } else { "no" }.to_string())
        }
        Family::Count => {
            let s = SHAPES[rng.random_range(0..SHAPES.len())];
            (format!("How many {}s are there?", s.name()), scene.with_shape(s).len().to_string())
        }
        Family::Texture | Family::Size | Family::Position => {
            let o = pick(scene.objects.iter().collect(), rng)?;
            let (c, s) = (o.color.name(), o.shape.name());
            match family {
                Family::Texture => {
                    (format!("What is the texture of the {c} {s}?"), o.texture.name().to_string())
                }
                Family::Size => (format!("Is the {c} {s} small or large?"), o.size_name().to_string()),
                _ => (
                    format!("Is the {c} {s} on the left, in the middle, or on the right?"),
                    o.column().to_string(),
                ),
            }
        }
    };
    Some(Question { family, question, answer })
}

/// `per_image` questions about `scene`, from families drawn uniformly among those the scene
/// allows (a family may repeat; a repeated question is drawn again, a few times at most).
pub fn questions(scene: &Scene, per_image: usize, rng: &mut StdRng) -> Vec<Question> {
    let mut out: Vec<Question> = Vec::with_capacity(per_image);
    let mut tries = 0;
    while out.len() < per_image && tries < per_image * 8 {
        tries += 1;
        let family = FAMILIES[rng.random_range(0..FAMILIES.len())];
        if let Some(q) = ask(scene, family, rng) {
            if !out.iter().any(|x| x.question == q.question) {
                out.push(q);
            }
        }
    }
    out
}

/// The scenes of split `split` for `seed`, each with `per_image` questions, in the order
/// [`super::write_shapes`] writes them: scene `i` here is image `i` of `htc data shapes --split
/// SPLIT --seed SEED --questions-per-image PER_IMAGE` (the questions draw from the same RNG as
/// the scenes, so the scenes after the first depend on `per_image` too).
pub fn split_scenes(
    seed: u64, split: &str, per_image: usize,
) -> impl Iterator<Item = (Scene, Vec<Question>)> {
    let mut rng = rng_for(seed, split);
    std::iter::from_fn(move || {
        let scene = Scene::sample(&mut rng);
        let qs = questions(&scene, per_image, &mut rng);
        Some((scene, qs))
    })
}

/// A generator for one split: the RNG is seeded by the seed and the split's name, so the
/// splits of one seed differ.
pub fn rng_for(seed: u64, split: &str) -> StdRng {
    let mix =
        split.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    StdRng::seed_from_u64(seed ^ mix)
}
