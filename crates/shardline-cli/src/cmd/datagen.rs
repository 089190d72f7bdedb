//! `shardline datagen`: synthetic datasets for the quickstart, tests and benchmarks.

use anyhow::{Context, Result};
use shardline_datagen::{Format, ShapesConfig};
use shardline_store::Store;

use crate::progress::Ui;

/// The generators.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Images of one filled shape each (circle, square, triangle, ...); the shape is the class.
    Shapes(ShapesArgs),
}

/// Flags of `shardline datagen shapes`.
#[derive(Debug, clap::Args)]
pub struct ShapesArgs {
    /// Where to write <class_label>/<id>.<ext>.
    #[arg(long, value_name = "URL")]
    pub out: String,
    /// Number of classes (1 to 10).
    #[arg(long, default_value_t = ShapesConfig::default().classes)]
    pub classes: usize,
    /// Images per class.
    #[arg(long, default_value_t = ShapesConfig::default().per_class)]
    pub per_class: usize,
    /// Width (and, without --height, height) in pixels.
    #[arg(long, default_value_t = ShapesConfig::default().size)]
    pub size: u32,
    /// Height in pixels, for images that are not square.
    #[arg(long)]
    pub height: Option<u32>,
    /// Image encoding.
    #[arg(long, value_enum, default_value_t = FormatArg::Jpeg)]
    pub format: FormatArg,
    /// Seed of every random choice; the same seed gives the same bytes.
    #[arg(long, default_value_t = ShapesConfig::default().seed)]
    pub seed: u64,
    /// Write into an --out that holds other data (overwriting what has the same names).
    #[arg(long)]
    pub force: bool,
}

/// Image encodings.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    /// JPEG, quality 90.
    Jpeg,
    /// PNG.
    Png,
}

impl ShapesArgs {
    /// The generator's settings.
    pub fn config(&self) -> ShapesConfig {
        ShapesConfig {
            classes: self.classes,
            per_class: self.per_class,
            size: self.size,
            height: self.height,
            format: match self.format {
                FormatArg::Jpeg => Format::Jpeg,
                FormatArg::Png => Format::Png,
            },
            seed: self.seed,
        }
    }
}

/// Generates a dataset with a progress bar, returning how many objects were written.
pub async fn shapes(args: &ShapesArgs, ui: &Ui) -> Result<usize> {
    let out = Store::open(&args.out).with_context(|| format!("datagen: --out {}", args.out))?;
    if !args.force {
        shardline_datagen::check_out(&out, &args.config()).await?;
    }
    generate(&out, &args.config(), ui).await
}

/// Generates the dataset `config` describes into `out`.
pub async fn generate(out: &Store, config: &ShapesConfig, ui: &Ui) -> Result<usize> {
    config.validate()?;
    let total = (config.classes * config.per_class) as u64;
    let bar = ui.bar("generating", Some(total), "images");
    let written = shardline_datagen::generate(out, config, &|| bar.inc(1)).await?;
    bar.finish_and_clear();
    ui.say(format!(
        "datagen: {written} images in {} classes written to {}",
        config.classes,
        out.uri()
    ));
    Ok(written)
}

/// Runs a generator.
pub async fn run(command: Command, ui: &Ui) -> Result<()> {
    match command {
        Command::Shapes(args) => shapes(&args, ui).await.map(|_| ()),
    }
}
