//! Excel in and out: workbooks written here with rust_xlsxwriter, run through the real binary
//! against the mock on loopback, and the `.xlsx` output read back with calamine.

use crate::common;

use calamine::{open_workbook_auto, Data, Reader};
use common::*;
use rust_xlsxwriter::{ExcelDateTime, Format, Formula, Workbook};

/// `products.xlsx`: sheet "Products" (typed cells, an empty row, an error cell, a column with
/// neither name nor data) and sheet "Prices 2027".
fn write_products(ws: &Workspace) {
    let mut book = Workbook::new();
    let date = Format::new().set_num_format("yyyy-mm-dd");
    let datetime = Format::new().set_num_format("yyyy-mm-dd hh:mm");
    let launch = ExcelDateTime::from_ymd(2026, 11, 30).unwrap();
    let updated = ExcelDateTime::from_ymd(2026, 11, 30)
        .unwrap()
        .and_hms(14, 5, 0)
        .unwrap();
    let s = book.add_worksheet();
    s.set_name("Products").unwrap();
    let header = [
        "sku", "name", "qty", "price", "in_stock", "launch", "updated", "", "note",
    ];
    for (c, h) in header.iter().enumerate() {
        if !h.is_empty() {
            s.write_string(0, c as u16, *h).unwrap();
        }
    }
    // Row 2.
    s.write_string(1, 0, "SKU-1").unwrap();
    s.write_string(1, 1, "Mug ☕🎉").unwrap();
    s.write_number(1, 2, 3).unwrap();
    s.write_number(1, 3, 19.99).unwrap();
    s.write_boolean(1, 4, true).unwrap();
    s.write_datetime_with_format(1, 5, &launch, &date).unwrap();
    s.write_datetime_with_format(1, 6, &updated, &datetime)
        .unwrap();
    // A formatted blank cell: the sheet's range reaches column H, which has no name and no data.
    s.write_blank(1, 7, &date).unwrap();
    // Row 3 is empty. Row 4.
    s.write_string(3, 0, "SKU-2").unwrap();
    s.write_string(3, 1, "=1+1").unwrap();
    s.write_number(3, 2, 12).unwrap();
    s.write_number(3, 3, 5.5).unwrap();
    s.write_boolean(3, 4, false).unwrap();
    s.write_datetime_with_format(3, 5, &launch, &date).unwrap();
    s.write_datetime_with_format(3, 6, &updated, &datetime)
        .unwrap();
    s.write_string(3, 8, "fragile").unwrap();
    // Row 5: the price is an error cell (a formula whose cached result is #N/A).
    s.write_string(4, 0, "SKU-3").unwrap();
    s.write_string(4, 1, "Vase").unwrap();
    s.write_number(4, 2, 1).unwrap();
    s.write_formula(4, 3, Formula::new("=NA()").set_result("#N/A"))
        .unwrap();
    s.write_boolean(4, 4, true).unwrap();
    let s = book.add_worksheet();
    s.set_name("Prices 2027").unwrap();
    s.write_string(0, 0, "sku").unwrap();
    s.write_string(0, 1, "price").unwrap();
    s.write_string(1, 0, "P-9").unwrap();
    s.write_number(1, 1, 7.25).unwrap();
    std::fs::create_dir_all(ws.dir.path()).unwrap();
    book.save(ws.path("products.xlsx")).unwrap();
}

/// One row of string cells; `None` leaves a cell empty.
type Cells<'a> = &'a [Option<&'a str>];

/// A one-sheet workbook of string cells at `rel`.
fn write_sheet(ws: &Workspace, rel: &str, rows: &[Cells]) {
    let mut book = Workbook::new();
    let s = book.add_worksheet();
    for (r, row) in rows.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            if let Some(v) = cell {
                s.write_string(r as u32, c as u16, *v).unwrap();
            }
        }
    }
    book.save(ws.path(rel)).unwrap();
}

/// The job over products.xlsx (`input` adds to `[input]`) against `base_url`, output at
/// `output`; the user message echoes what each cell rendered as.
fn products_job(ws: &Workspace, base_url: &str, input: &str, output: &str) -> String {
    ws.write_job(
        "job.toml",
        &JobFile {
            input: &format!("path = \"products.xlsx\"\n{input}"),
            prompt: "user = \"[[mock:echo]]{{ sku }}|{{ name }}|{{ qty + 1 }}|{{ price * 2 }}|\
                     {% if in_stock %}yes{% else %}no{% endif %}|{{ launch }}|{{ updated }}|\
                     {{ note }}|\"",
            api: &format!("base_url = \"{base_url}\""),
            output: &format!("path = \"{output}\""),
            ..JobFile::default()
        },
    )
}

/// The first sheet of an `.xlsx` as rows of cells.
fn read_xlsx(ws: &Workspace, rel: &str) -> (String, Vec<Vec<Data>>) {
    let mut book = open_workbook_auto(ws.path(rel)).unwrap();
    let name = book.sheet_names()[0].clone();
    let range = book.worksheet_range(&name).unwrap();
    // The formulas of the sheet: none may be one.
    let formulas = book.worksheet_formula(&name).unwrap();
    assert!(
        formulas.used_cells().all(|(_, _, f)| f.is_empty()),
        "{rel} holds formula cells: {:?}",
        formulas.used_cells().collect::<Vec<_>>()
    );
    (name, range.rows().map(<[Data]>::to_vec).collect())
}

fn text_of(cell: &Data) -> String {
    match cell {
        Data::String(s) => s.clone(),
        Data::Empty => String::new(),
        other => panic!("expected a text cell, found {other:?}"),
    }
}

#[test]
fn typed_cells_reach_the_template_and_come_back_as_xlsx_cells() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    write_products(&ws);
    let job = products_job(&ws, &mock.base_url, "id = \"sku\"", "out/result.xlsx");
    let out = ws.run(&["run", &job, "--skip-bad-rows"]);
    // SKU-3's #N/A makes it a failed row.
    assert_exit(&out, 1);
    let (sheet, rows) = read_xlsx(&ws, "out/result.xlsx");
    assert_eq!(sheet, "output");
    let header: Vec<String> = rows[0].iter().map(text_of).collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no column {name} in {header:?}"))
    };
    // The input columns (the unnamed empty column H left out), then what the CSV output has.
    assert_eq!(
        header[..9],
        ["sku", "name", "qty", "price", "in_stock", "launch", "updated", "note", "output"]
    );
    assert_eq!(rows.len(), 4, "header + 3 rows: the empty row 3 is skipped");
    let output = |r: usize| text_of(&rows[r][col("output")]);
    assert_eq!(
        output(1),
        "[[mock:echo]]SKU-1|Mug ☕🎉|4|39.98|yes|2026-11-30|2026-11-30T14:05:00||"
    );
    assert_eq!(
        output(2),
        "[[mock:echo]]SKU-2|=1+1|13|11.0|no|2026-11-30|2026-11-30T14:05:00|fragile|"
    );
    assert_eq!(text_of(&rows[1][col("status")]), "ok");
    // Input numbers and booleans stay typed cells; input text stays text, even `=1+1`.
    assert_eq!(rows[1][col("qty")], Data::Float(3.0));
    assert_eq!(rows[1][col("price")], Data::Float(19.99));
    assert_eq!(rows[2][col("in_stock")], Data::Bool(false));
    assert_eq!(rows[2][col("name")], Data::String("=1+1".into()));
    assert_eq!(text_of(&rows[1][col("launch")]), "2026-11-30");
    assert!(matches!(rows[1][col("prompt_tokens")], Data::Float(n) if n > 0.0));
    // The error cell names the sheet and cell, traced to the sheet's own row number.
    assert_eq!(text_of(&rows[3][col("status")]), "failed");
    let error = text_of(&rows[3][col("error")]);
    assert!(
        error.contains(
            "products.xlsx:Products!D5: column \"price\" holds the spreadsheet error #N/A"
        ),
        "{error}"
    );

    // The CSV output of the same job has the same columns.
    let out = ws.run(&["run", &job, "--skip-bad-rows", "--output", "out/result.csv"]);
    assert_exit(&out, 1);
    let (csv_header, csv_rows) = ws.csv("out/result.csv");
    assert_eq!(csv_header, header);
    assert_eq!(csv_rows[0][col("output")], output(1));
}

#[test]
fn a_second_sheet_is_chosen_by_name_or_by_index() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    write_products(&ws);
    for sheet in ["\"Prices 2027\"", "1"] {
        let job = ws.write_job(
            "job.toml",
            &JobFile {
                input: &format!("path = \"products.xlsx\"\nsheet = {sheet}"),
                prompt: "user = \"[[mock:echo]]{{ sku }} costs {{ price }}\"",
                api: &format!("base_url = \"{}\"", mock.base_url),
                output: "path = \"out/prices.csv\"",
                ..JobFile::default()
            },
        );
        let out = ws.run(&["run", &job]);
        assert_exit(&out, 0);
        assert_eq!(
            ws.column("out/prices.csv", "output"),
            ["[[mock:echo]]P-9 costs 7.25"],
            "sheet = {sheet}"
        );
    }
    // A CSV input has no sheets: the key is refused rather than ignored.
    ws.csv_rows(2);
    let csv_job = ws.write_job(
        "csv.toml",
        &JobFile {
            input: "path = \"rows.csv\"\nsheet = 1",
            api: &format!("base_url = \"{}\"", mock.base_url),
            ..JobFile::default()
        },
    );
    let out = ws.run(&["run", &csv_job]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("input.sheet: only a workbook input (.xlsx, .xls, .ods) has sheets"),
        "{}",
        text(&out)
    );
    // From the command line too: a name and an index.
    let job = products_job(&ws, &mock.base_url, "", "out/x.csv");
    let out = ws.run(&["run", &job, "--set", "input.sheet=Nope"]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains(
            "products.xlsx: input.sheet: no sheet named \"Nope\"; the sheets are \"Products\", \
             \"Prices 2027\""
        ),
        "{}",
        text(&out)
    );
    let out = ws.run(&["run", &job, "--set", "input.sheet=2"]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("input.sheet: there is no sheet 2 (counting from 0)"),
        "{}",
        text(&out)
    );
}

#[test]
fn header_oddities_are_refused_naming_the_cell() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    let cases: [(&str, &[Cells], &str); 3] = [
        (
            "blank.xlsx",
            &[
                &[Some("sku"), Some("  "), Some("price")],
                &[Some("a"), Some("x"), Some("1")],
            ],
            "blank.xlsx:Sheet1!B1: column B of the header has no name, but holds data",
        ),
        (
            "dup.xlsx",
            &[
                &[Some("sku"), Some("name"), Some("name")],
                &[Some("a"), Some("x"), Some("y")],
            ],
            "dup.xlsx:Sheet1!C1: duplicate column name \"name\" (columns B and C)",
        ),
        (
            "dupid.xlsx",
            &[
                &[Some("sku"), Some("name")],
                &[Some("a"), Some("x")],
                &[None, None],
                &[Some("a"), Some("y")],
            ],
            "dupid.xlsx:Sheet1!A4: duplicate id \"a\" in column \"sku\": row 2 has the same id",
        ),
    ];
    for (file, rows, want) in cases {
        write_sheet(&ws, file, rows);
        let job = ws.write_job(
            "job.toml",
            &JobFile {
                input: &format!("path = \"{file}\"\nid = \"sku\""),
                prompt: "user = \"{{ sku }}\"",
                api: &format!("base_url = \"{}\"", mock.base_url),
                output: "path = \"out/x.csv\"",
                ..JobFile::default()
            },
        );
        let out = ws.run(&["run", &job]);
        assert_exit(&out, 2);
        assert!(text(&out).contains(want), "{file}: {}", text(&out));
    }
    assert_eq!(mock.stat("requests"), 0);
}

#[test]
fn the_header_row_can_sit_below_a_title_and_rows_keep_their_sheet_numbers() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    write_sheet(
        &ws,
        "titled.xlsx",
        &[
            &[Some("Spring catalogue")],
            &[],
            &[Some("sku"), Some("name")],
            &[Some("a"), Some("Chair")],
            &[Some("b"), Some("")],
        ],
    );
    let job = ws.write_job(
        "job.toml",
        &JobFile {
            input: "path = \"titled.xlsx\"\nid = \"sku\"\nheader_row = 3",
            prompt: "user = \"[[mock:echo]]{{ name | upper }}{{ missing }}\"",
            api: &format!("base_url = \"{}\"", mock.base_url),
            output: "path = \"out/x.csv\"",
            ..JobFile::default()
        },
    );
    // `missing` is no column: the render error names the row by its sheet row (line 4).
    let out = ws.run(&["run", &job]);
    assert_exit(&out, 2);
    assert!(text(&out).contains("line 4"), "{}", text(&out));
    let fixed = std::fs::read_to_string(&job)
        .unwrap()
        .replace("{{ missing }}", "");
    std::fs::write(&job, fixed).unwrap();
    let out = ws.run(&["run", &job]);
    assert_exit(&out, 0);
    assert_eq!(
        ws.column("out/x.csv", "output"),
        ["[[mock:echo]]CHAIR", "[[mock:echo]]"]
    );
    // The title row as header: the hint names input.header_row.
    let out = ws.run(&["run", &job, "--set", "input.header_row=1"]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("titled.xlsx:Sheet1!B1: column B of the header has no name"),
        "{}",
        text(&out)
    );
    let out = ws.run(&["run", &job, "--set", "input.header_row=0"]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("input.header_row: 0 is outside the allowed range 1..=1048576"),
        "{}",
        text(&out)
    );
}

#[test]
fn an_xlsx_job_resumes_without_sending_again() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    write_products(&ws);
    // Known by id, and known by the cells' content.
    for (input, output) in [
        ("id = \"sku\"\nskip_bad_rows = true", "out/by_id.xlsx"),
        ("skip_bad_rows = true", "out/by_content.xlsx"),
    ] {
        let job = products_job(&ws, &mock.base_url, input, output);
        let before = mock.stat("requests");
        assert_exit(&ws.run(&["run", &job]), 1);
        let first = mock.stat("requests") - before;
        assert_eq!(first, 2, "{output}: two good rows sent");
        let (_, rows) = read_xlsx(&ws, output);
        assert_exit(&ws.run(&["run", &job]), 1);
        assert_eq!(
            mock.stat("requests") - before,
            first,
            "{output}: resume sent more"
        );
        let (_, again) = read_xlsx(&ws, output);
        assert_eq!(again, rows, "{output}: the resumed output is the same");
    }
}

#[test]
fn an_answer_that_looks_like_a_formula_stays_text() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    write_products(&ws);
    let job = ws.write_job(
        "job.toml",
        &JobFile {
            input: "path = \"products.xlsx\"\nsheet = 1",
            prompt:
                "user = \"=HYPERLINK(\\\"http://x.invalid\\\",\\\"{{ sku }}\\\")[[mock:echo]]\"",
            api: &format!("base_url = \"{}\"", mock.base_url),
            output: "path = \"out/x.data\"\nformat = \"xlsx\"",
            ..JobFile::default()
        },
    );
    assert_exit(&ws.run(&["run", &job]), 0);
    // The review page does not read workbooks: it says so instead of misreading one.
    let out = ws.run(&["report", &job]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("the review page reads CSV or JSONL outputs, not xlsx"),
        "{}",
        text(&out)
    );
    let (_, rows) = read_xlsx(&ws, "out/x.data");
    let header: Vec<String> = rows[0].iter().map(text_of).collect();
    let at = header.iter().position(|h| h == "output").unwrap();
    assert_eq!(
        rows[1][at],
        Data::String("=HYPERLINK(\"http://x.invalid\",\"P-9\")[[mock:echo]]".into())
    );
}

/// One product: sku, name, category, price, in stock, launch (y, m, d), features.
type Product = (
    &'static str,
    &'static str,
    &'static str,
    f64,
    bool,
    (u16, u8, u8),
    &'static str,
);

const EXAMPLE_PRODUCTS: [Product; 20] = [
    (
        "SKU-001",
        "Trail Runner 2",
        "Shoes",
        119.0,
        true,
        (2026, 3, 2),
        "Grippy sole, 240 g, recycled mesh",
    ),
    (
        "SKU-002",
        "Alpine Shell",
        "Jackets",
        289.0,
        true,
        (2026, 9, 15),
        "3-layer waterproof, pit zips, helmet hood",
    ),
    (
        "SKU-003",
        "City Commuter Backpack",
        "Bags",
        89.5,
        false,
        (2026, 1, 20),
        "20 L, laptop sleeve, reflective strips",
    ),
    (
        "SKU-004",
        "Thermo Flask 750",
        "Kitchen",
        34.9,
        true,
        (2025, 11, 3),
        "Keeps hot 12 h, cold 24 h, dishwasher safe",
    ),
    (
        "SKU-005",
        "Merino Base Layer",
        "Tops",
        74.0,
        true,
        (2026, 10, 1),
        "Odour resistant, flat seams, 190 g/m²",
    ),
    (
        "SKU-006",
        "Summit Gloves",
        "Accessories",
        39.95,
        true,
        (2026, 10, 20),
        "Touchscreen tips, fleece lining",
    ),
    (
        "SKU-007",
        "Camp Stove Mini",
        "Kitchen",
        49.0,
        false,
        (2025, 6, 12),
        "Boils 1 L in 3 min, folds to 9 cm",
    ),
    (
        "SKU-008",
        "Trekking Poles",
        "Accessories",
        64.0,
        true,
        (2026, 4, 8),
        "Carbon, 3 sections, cork grips",
    ),
    (
        "SKU-009",
        "Rain Trousers",
        "Trousers",
        99.0,
        true,
        (2026, 9, 1),
        "Full side zips, packs into pocket",
    ),
    (
        "SKU-010",
        "Headlamp 400",
        "Lighting",
        44.5,
        true,
        (2026, 2, 14),
        "400 lumen, USB-C, red light mode",
    ),
    (
        "SKU-011",
        "Down Jacket Lite",
        "Jackets",
        229.0,
        false,
        (2026, 11, 2),
        "800 fill, 310 g, stuff sack",
    ),
    (
        "SKU-012",
        "Sleeping Mat Air",
        "Camping",
        129.0,
        true,
        (2026, 5, 30),
        "R-value 4.2, 7 cm thick, 480 g",
    ),
    (
        "SKU-013",
        "Dome Tent 2P",
        "Camping",
        349.0,
        true,
        (2026, 3, 18),
        "Two doors, 1.9 kg, colour-coded poles",
    ),
    (
        "SKU-014",
        "Water Filter Squeeze",
        "Camping",
        29.9,
        true,
        (2025, 8, 25),
        "0.1 micron, 1 L pouch, 85 g",
    ),
    (
        "SKU-015",
        "Hiking Socks 3-Pack",
        "Accessories",
        24.0,
        true,
        (2026, 1, 5),
        "Cushioned heel, merino blend",
    ),
    (
        "SKU-016",
        "Approach Shoe",
        "Shoes",
        139.0,
        false,
        (2026, 7, 7),
        "Sticky rubber toe, lace-to-toe fit",
    ),
    (
        "SKU-017",
        "Day Pack 18",
        "Bags",
        59.0,
        true,
        (2026, 4, 22),
        "Hydration sleeve, hip belt, 610 g",
    ),
    (
        "SKU-018",
        "Sun Hoodie",
        "Tops",
        54.0,
        true,
        (2026, 5, 2),
        "UPF 50, thumb loops, quick dry",
    ),
    (
        "SKU-019",
        "Camp Mug Steel",
        "Kitchen",
        17.5,
        true,
        (2025, 12, 1),
        "Double wall, 350 ml, lid ☕",
    ),
    (
        "SKU-020",
        "Compass Pro",
        "Accessories",
        42.0,
        true,
        (2026, 6, 19),
        "Sighting mirror, declination adjust",
    ),
];

/// The example's workbook, as written by [`write_example_workbook`].
fn example_workbook(path: &std::path::Path) {
    let mut book = Workbook::new();
    let bold = Format::new().set_bold();
    let date = Format::new().set_num_format("yyyy-mm-dd");
    let s = book.add_worksheet();
    s.set_name("Products").unwrap();
    let header = [
        "sku", "name", "category", "price", "in_stock", "launch", "features",
    ];
    for (c, h) in header.iter().enumerate() {
        s.write_string_with_format(0, c as u16, *h, &bold).unwrap();
    }
    for (i, (sku, name, category, price, stock, (y, m, d), features)) in
        EXAMPLE_PRODUCTS.iter().enumerate()
    {
        let r = i as u32 + 1;
        s.write_string(r, 0, *sku).unwrap();
        s.write_string(r, 1, *name).unwrap();
        s.write_string(r, 2, *category).unwrap();
        s.write_number(r, 3, *price).unwrap();
        s.write_boolean(r, 4, *stock).unwrap();
        let launch = ExcelDateTime::from_ymd(*y, *m, *d).unwrap();
        s.write_datetime_with_format(r, 5, &launch, &date).unwrap();
        s.write_string(r, 6, *features).unwrap();
    }
    s.autofit();
    book.save(path).unwrap();
}

/// Writes `examples/product-copy-xlsx/products.xlsx`, the example's input:
/// `cargo test --test it xlsx::write_example_workbook -- --ignored`.
#[test]
#[ignore]
fn write_example_workbook() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/product-copy-xlsx/products.xlsx"
    );
    example_workbook(std::path::Path::new(path));
}

#[test]
fn the_example_workbook_runs_offline_and_writes_an_xlsx() {
    let ws = Workspace::new();
    let out = ws.run_shipped("examples/product-copy-xlsx/job.toml", &[], "copy.xlsx");
    assert_exit(&out, 0);
    let (_, rows) = read_xlsx(&ws, "copy.xlsx");
    assert_eq!(rows.len(), 21, "header + 20 products");
    let header: Vec<String> = rows[0].iter().map(text_of).collect();
    let status = header.iter().position(|h| h == "status").unwrap();
    assert!(rows[1..]
        .iter()
        .all(|r| r[status] == Data::String("ok".into())));
    // The committed workbook holds what the generator writes.
    let dir = tempfile::tempdir().unwrap();
    example_workbook(&dir.path().join("p.xlsx"));
    let cells = |p: &std::path::Path| {
        let mut book = open_workbook_auto(p).unwrap();
        book.worksheet_range("Products").unwrap()
    };
    let shipped = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/product-copy-xlsx/products.xlsx"
    );
    assert_eq!(
        cells(std::path::Path::new(shipped)),
        cells(&dir.path().join("p.xlsx"))
    );
}
