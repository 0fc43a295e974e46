# The bilinear twin: mmseg's PSPNet, which classifies at 1/8 and resizes the logits
# bilinearly. A 1 x 1 classifier commutes with bilinear resizing (its weights sum to one
# per pixel), so this equals upsampling the features bilinearly to full resolution before
# classifying them: the same place the image-guided JBU stack upsamples.
_base_ = ['./pspnet_r50-d8_featup-jbu-output_4xb4-160k_ade20k-512x512.py']

model = dict(output_upsampler=None)
