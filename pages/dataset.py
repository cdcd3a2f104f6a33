"""Dataset page: what the selected model was trained on, drawn from its reports/eda.json (computed at export,
never at page load), plus a few example images when the dataset folder is on this computer."""
from pathlib import Path

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from model.outputs import bundle_tables as tables
from model.outputs import data_folder
from model.outputs import formatting as F
from pages.lib.charts import PALETTE
from pages.lib.common import bundle_report, current_bundle
from pages.lib.router import take_over
from pages.lib.ui import data_dir_input, fmt_int, tr

take_over()  # a deep link on a fresh server: hand over to app.py's navigation (pages.lib.router)

SUBTYPE_COLOURS = {"normal": "#4C78A8", "bacteria": "#E45756", "virus": "#F58518", "unknown": "#9D755D"}

t = tr("dataset")


def style(fig: go.Figure, title: str | None, height: int = 340) -> go.Figure:
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=60 if title else 30, b=10),
                      legend_title_text="", uniformtext=dict(minsize=10, mode="hide"),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0))
    return fig


@st.cache_data(show_spinner=False, max_entries=8)
def examples(data_dir: str, classes: tuple, per_class: int, seed: int) -> dict:
    """{class: [(file name, downsized uint8 image or None)]}, decoded as any upload is."""
    return data_folder.examples(data_dir, list(classes), per_class, seed)


bundle = current_bundle()
if bundle is None:
    st.stop()
eda = bundle_report(bundle.name, "eda")
st.title(t("title"))
if not eda:
    st.info(t("no_report"))
    st.stop()

classes = bundle.classes
colour = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(classes)}
st.markdown(t("intro", model=bundle.title, dataset=eda.get("dataset", "?"), images=fmt_int(eda.get("n_images")),
              patients=fmt_int(eda.get("n_patients"))))

balance = tables.balance_frame(eda)
before = balance[balance["stage"] == "before"].set_index("label")["share"]
after = balance[balance["stage"] == "after"].set_index("label")["share"]
positive = classes[-1]
cols = st.columns(4)
cols[0].metric(t("m_images"), fmt_int(eda.get("n_images")))
cols[1].metric(t("m_patients"), fmt_int(eda.get("n_patients")))
cols[2].metric(t("m_positive_share", cls=positive), F.fmt_pct(before.get(positive)))
cols[3].metric(t("m_duplicates"), fmt_int(eda.get("duplicates_removed_if_deduplicated")), help=t("m_duplicates_help"))

# --- splits ---------------------------------------------------------------------------------------------------------
st.header(t("h_splits"))
st.caption(t("splits_caption"))
counts = tables.counts_frame(eda)
counts["group"] = [label if str(sub).lower() == str(label).lower() else f"{label} · {t.name('subtype', sub)}"
                   for label, sub in zip(counts["label"], counts["subtype"])]
counts["split_name"] = counts["split"].map(lambda s: t.name("split", s))
group_colour = {g: SUBTYPE_COLOURS.get(sub, colour.get(label, PALETTE[0]))
                for g, label, sub in zip(counts["group"], counts["label"], counts["subtype"])}
left, right = st.columns([1, 1])
with left:
    fig = px.bar(counts, x="split_name", y="images", color="group", text="images", color_discrete_map=group_colour,
                 labels={"split_name": t("col_split"), "images": t("col_images"), "group": ""})
    fig.update_traces(textposition="inside", insidetextanchor="middle")
    st.plotly_chart(style(fig, t("fig_counts")), key="counts_chart")
with right:
    pivot = tables.counts_pivot(eda)
    pivot["label"] = pivot["label"].replace({"all": t("all")})
    pivot["subtype"] = [t("all") if s == "all" else t.name("subtype", s) for s in pivot["subtype"]]
    pivot = pivot.rename(columns={"label": t("col_label"), "subtype": t("col_subtype"), "total": t("col_total"),
                                  **{s: t.name("split", s) for s in tables.SPLIT_ORDER}})
    st.dataframe(pivot, hide_index=True, key="counts_table")
    patients = tables.patients_frame(eda)
    patients["split"] = patients["split"].map(lambda s: t.name("split", s))
    st.dataframe(patients.rename(columns={"split": t("col_split"), "images": t("col_images"),
                                          "patients": t("col_patients"),
                                          "images_per_patient": t("col_images_per_patient")}),
                 hide_index=True, key="patients_table",
                 column_config={t("col_images_per_patient"): st.column_config.NumberColumn(format="%.2f"),
                                t("col_patients"): st.column_config.NumberColumn(format="%d")})
per_patient = tables.images_per_patient_frame(eda)
if len(per_patient):
    fig = px.bar(per_patient, x="images", y="patients", color_discrete_sequence=[PALETTE[0]],
                 labels={"images": t("x_images_per_patient"), "patients": t("y_patients")})
    st.plotly_chart(style(fig, t("fig_images_per_patient"), 300), key="per_patient_chart")
    st.caption(t("images_per_patient_caption"))

# --- balance --------------------------------------------------------------------------------------------------------
st.header(t("h_balance"))
balance["stage_name"] = balance["stage"].map(lambda s: t(f"stage_{s}"))
fig = px.bar(balance, x="stage_name", y="share", color="label", text="images", barmode="group",
             color_discrete_map=colour, labels={"stage_name": "", "share": t("y_share"), "label": ""})
fig.update_yaxes(tickformat=".0%", range=[0, 1])
left, right = st.columns([3, 2], vertical_alignment="center")
left.plotly_chart(style(fig, None, 320), key="balance_chart")
right.markdown(t("balance_caption", dupes=fmt_int(eda.get("duplicates_removed_if_deduplicated")), pos=positive,
                 before=F.fmt_pct(before.get(positive)), after=F.fmt_pct(after.get(positive))))

# --- size and shape -------------------------------------------------------------------------------------------------
st.header(t("h_size"))
spec = eda.get("input") or bundle.input_spec
st.caption(t("size_caption", w=spec.get("width"), h=spec.get("height")))
source = tables.source_summary(eda)
if source and source["low_resolution"]:
    st.warning(t("source_caption", original=fmt_int(source["original"]), total=fmt_int(source["total"]),
                 long_side=source["original_long_side"], low=fmt_int(source["low_resolution"]),
                 side=source["low_resolution_side"]))
sizes = tables.sizes_frame(eda)
if len(sizes):
    c1, c2, c3 = st.columns([2, 2, 1])
    with c1:
        bubbles = sizes.groupby(["width", "height", "label"]).size().reset_index(name="images")
        fig = px.scatter(bubbles, x="width", y="height", color="label", size="images", size_max=45, opacity=0.6,
                         color_discrete_map=colour, hover_data={"images": True},
                         labels={"width": t("x_width"), "height": t("y_height"), "label": "",
                                 "images": t("col_images")})
        fig.update_traces(marker=dict(sizemin=3))
        st.plotly_chart(style(fig, t("fig_sizes")), key="sizes_chart")
    with c2:
        fig = px.histogram(sizes, x="aspect", color="label", barmode="overlay", nbins=40, histnorm="percent",
                           color_discrete_map=colour, opacity=0.6, labels={"aspect": t("x_aspect"), "label": ""})
        fig.update_yaxes(title=t("y_share"), ticksuffix="%")
        st.plotly_chart(style(fig, t("fig_aspect")), key="aspect_chart")
    with c3:
        st.markdown(f"**{t('fig_common_sizes')}**")
        st.dataframe(tables.size_counts(eda).rename(columns={"size": t("col_size"), "images": t("col_images")}),
                     hide_index=True, key="sizes_table")

# --- intensity ------------------------------------------------------------------------------------------------------
hist = tables.histogram_frame(eda)
if len(hist):
    st.header(t("h_intensity"))
    fig = px.line(hist, x="intensity", y="density", color="label", markers=True, color_discrete_map=colour,
                  labels={"intensity": t("x_intensity"), "density": t("y_density"), "label": ""})
    fig.update_yaxes(tickformat=".0%")
    st.plotly_chart(style(fig, None, 320), key="intensity_chart")
    st.caption(t("intensity_caption"))

# --- mean image -----------------------------------------------------------------------------------------------------
means = tables.mean_images(eda)
if means:
    st.header(t("h_mean"))
    panels = [(label, img, "gray", 0, 255) for label, img in means.items()]
    if len(classes) == 2 and all(c in means for c in classes):
        diff = means[classes[1]] - means[classes[0]]
        lim = float(np.abs(diff).max()) or 1.0
        panels.append((t("mean_difference", a=classes[0], b=classes[1]), diff, "RdBu_r", -lim, lim))
    for col, (label, img, scale, lo, hi) in zip(st.columns(len(panels)), panels):
        fig = px.imshow(img, color_continuous_scale=scale, zmin=lo, zmax=hi)
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        fig.update_layout(coloraxis_showscale=scale != "gray", title=label, height=320,
                          margin=dict(l=0, r=0, t=40, b=0))
        col.plotly_chart(fig, key=f"mean_{label}")
    if len(panels) > len(means):
        st.caption(t("mean_caption", a=classes[0], b=classes[1]))

# --- examples -------------------------------------------------------------------------------------------------------
st.header(t("h_examples"))
st.caption(t("examples_caption"))
data_dir = data_dir_input(t, "dataset_data_dir")
if not data_folder.data_dir_ok(data_dir):
    st.info(t("data_dir_missing"))
else:
    seed = st.session_state.setdefault("dataset_example_seed", 0)
    if st.button(t("shuffle"), key="dataset_shuffle"):
        seed = st.session_state["dataset_example_seed"] = seed + 1
    shown = examples(str(Path(data_dir).expanduser()), tuple(classes), 6, seed)
    for cls in classes:
        st.subheader(cls)
        items = shown.get(cls) or []
        if not items:
            st.caption(t("no_examples", cls=cls))
            continue
        for col, (file, img) in zip(st.columns(len(items)), items):
            if img is None:
                col.caption(f"{file}: {t('unreadable')}")
            else:
                col.image(img, caption=file, width="stretch")
